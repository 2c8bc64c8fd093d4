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

#include "spi.h"

/* does an optional table hold rows?  (cached per backend) */
typedef struct RowsFlag
{
	const char *relname;		/* table in schema agentretry */
	ArPlan		query;			/* SELECT EXISTS (...), no parameters */
	Oid			relid;
	bool		registered;
	bool		known;
	bool		value;
	uint64		generation;		/* counts invalidations, for dependent caches */
} RowsFlag;

#define ROWS_FLAG(relname, sql) {(relname), {(sql), 0}}

extern bool cached_flag(RowsFlag *flag);

#endif							/* AGENTRETRY_CACHE_H */
