/*-------------------------------------------------------------------------
 *
 * spi.h
 *	  The SPI layer of agentretry: connecting with search_path pinned,
 *	  named prepared plans, parameter setters and column readers.
 *
 * Everything above this layer reads and writes tables through it; it
 * depends on nothing of agentretry but agentretry.h.
 *
 * Two rules hold for every caller:
 *
 *	- Plans are ArPlan values, one per statement, named after what the
 *	  statement does and defined at file level.  The query text is a
 *	  constant (or, for a few, filled in before the first run), schema-
 *	  qualified, and passes enums as text.
 *
 *	- A Datum that must outlive ar_spi_end() (a function's result) is built,
 *	  or copied, in spi.caller, the memory context that was current when
 *	  ar_spi_begin() was called.  Nothing else survives SPI_finish.
 *
 * src/spi.h
 *
 *-------------------------------------------------------------------------
 */
#ifndef AGENTRETRY_SPI_H
#define AGENTRETRY_SPI_H

#include "executor/spi.h"

#include "agentretry.h"

/* one SPI connection of a SQL-callable function */
typedef struct ArSpi
{
	MemoryContext caller;		/* where results that outlive it are built */
	int			guc_nest_level; /* of the pinned search_path (PG 17+) */
	Oid			save_user;		/* the role and security context before */
	int			save_sec;
	bool		switched;		/* to the owner of agentretry's tables */
} ArSpi;

extern void ar_spi_begin(ArSpi *spi);
extern void ar_spi_end(ArSpi *spi);
extern Oid	ar_caller(void);

#define AR_PLAN_MAX_ARGS 64

/* a statement prepared on first use and kept for the backend's life */
typedef struct ArPlan
{
	const char *sql;			/* NULL until filled in, for built texts */
	int			nargs;
	Oid			argtypes[AR_PLAN_MAX_ARGS];
	SPIPlanPtr	plan;
	bool		custom;			/* planned for each call's parameters */
} ArPlan;

extern uint64 ar_run(ArPlan *p, Datum *values, const char *nulls,
					 bool read_only);

/* parameter setters: a "none" value becomes SQL NULL */
extern void param_text(Datum *values, char *nulls, int i, const char *s);
extern void param_ts(Datum *values, char *nulls, int i, TimestampTz ts);
extern void param_usec(Datum *values, char *nulls, int i, int64 usec);
extern void param_label(Datum *values, char *nulls, int i,
						const char *const *labels, int index);
extern void param_jsonb(Datum *values, char *nulls, int i, Jsonb *j);

/* column readers (1-based): SQL NULL becomes the "none" value */
extern char *col_text(HeapTuple tup, TupleDesc desc, int col);
extern TimestampTz col_ts(HeapTuple tup, TupleDesc desc, int col);
extern int64 col_int64(HeapTuple tup, TupleDesc desc, int col, int64 none);
extern int32 col_int32(HeapTuple tup, TupleDesc desc, int col, int32 none);

/* the first column of the first row of the last statement */
extern Datum first_value(bool *isnull);

#endif							/* AGENTRETRY_SPI_H */
