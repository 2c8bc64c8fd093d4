/*-------------------------------------------------------------------------
 *
 * cache.h
 *	  Per-backend knowledge of whether optional tables hold any row.
 *
 * src/cache.h
 *
 *-------------------------------------------------------------------------
 */
#ifndef AGENTRETRY_CACHE_H
#define AGENTRETRY_CACHE_H

#include "storage/lock.h"

#include "spi.h"

/* does an optional table hold rows?  (cached per backend) */
typedef struct RowsFlag
{
	const char *relname;		/* table in schema agentretry */
	ArPlan		query;			/* SELECT EXISTS (...), no parameters */
	Oid			relid;
	bool		registered;
	bool		known;			/* value holds across transactions */
	bool		value;
	LocalTransactionId lxid;	/* value holds in this transaction only */
	uint64		generation;		/* counts invalidations, for dependent caches */
} RowsFlag;

#define ROWS_FLAG(relname, sql) {(relname), {(sql), 0}}

extern bool cached_flag(RowsFlag *flag);
extern bool cached_flag_peek(const RowsFlag *flag, bool *value);

#endif							/* AGENTRETRY_CACHE_H */
