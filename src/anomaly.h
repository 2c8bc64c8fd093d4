/*-------------------------------------------------------------------------
 *
 * anomaly.h
 *	  Recording anomalies, each once.
 *
 * src/anomaly.h
 *
 *-------------------------------------------------------------------------
 */
#ifndef AGENTRETRY_ANOMALY_H
#define AGENTRETRY_ANOMALY_H

#include "lib/stringinfo.h"

#include "operation.h"

typedef struct AnomalyData
{
	const char *kind;			/* an agentretry.anomaly_kind label */
	const char *tenant;
	const char *key;
	const char *other_key;
	const char *run_id;
	const char *tool;
	const char *receipt;
	int			attempt;		/* -1: none */
	Jsonb	   *detail;
	TimestampTz at;
} AnomalyData;

extern void anomaly_init(AnomalyData *a, const char *kind,
						 const Operation *op, TimestampTz at);
extern bool record_anomaly(const AnomalyData *a);

/* a small JSON object, built field by field */
extern void detail_begin(StringInfo buf);
extern void detail_text(StringInfo buf, const char *name, const char *value);
extern void detail_jsonb(StringInfo buf, const char *name, Jsonb *value);
extern Jsonb *detail_end(StringInfo buf);

#endif							/* AGENTRETRY_ANOMALY_H */
