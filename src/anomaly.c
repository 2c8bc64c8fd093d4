/*-------------------------------------------------------------------------
 *
 * anomaly.c
 *	  Recording anomalies in agentretry.anomalies, each once.
 *
 * An anomaly's identity is its kind and what it is about (tenant, key,
 * other key, run, receipt, attempt: the unique index anomalies_once, NULLs
 * not distinct).  Every writer inserts with ON CONFLICT DO NOTHING, so
 * evidence reported twice, or two reconciles finding the same thing at
 * once, record it once; the second waits for the first to commit or roll
 * back, and records it if the first rolled back.
 *
 * src/anomaly.c
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "catalog/pg_type.h"
#include "utils/builtins.h"
#include "utils/json.h"
#include "utils/jsonb.h"
#include "utils/timestamp.h"

#include "anomaly.h"

static ArPlan insert_anomaly_plan = {
	"INSERT INTO agentretry.anomalies"
	" (tenant, kind, key, other_key, run_id, tool, receipt, attempt, detail,"
	"  found_at)"
	" VALUES ($1, $2::agentretry.anomaly_kind, $3, $4, $5, $6, $7, $8, $9, $10)"
	" ON CONFLICT DO NOTHING",
	10, {TEXTOID, TEXTOID, TEXTOID, TEXTOID, TEXTOID, TEXTOID, TEXTOID,
	INT4OID, JSONBOID, TIMESTAMPTZOID}
};

/* An anomaly of kind about op (its tenant, key, run and tool). */
void
anomaly_init(AnomalyData *a, const char *kind, const Operation *op,
			 TimestampTz at)
{
	memset(a, 0, sizeof(*a));
	a->kind = kind;
	a->tenant = op->tenant;
	a->key = op->key;
	a->run_id = op->run_id;
	a->tool = op->tool;
	a->attempt = -1;
	a->at = at;
}

/*
 * Record the anomaly unless it was recorded before; returns whether it is
 * new.  The caller is SPI-connected.
 */
bool
record_anomaly(const AnomalyData *a)
{
	Datum		values[10];
	char		nulls[10];

	memset(nulls, ' ', sizeof(nulls));
	values[0] = CStringGetTextDatum(a->tenant);
	values[1] = CStringGetTextDatum(a->kind);
	param_text(values, nulls, 2, a->key);
	param_text(values, nulls, 3, a->other_key);
	param_text(values, nulls, 4, a->run_id);
	param_text(values, nulls, 5, a->tool);
	param_text(values, nulls, 6, a->receipt);
	values[7] = Int32GetDatum(a->attempt);
	nulls[7] = a->attempt < 0 ? 'n' : ' ';
	param_jsonb(values, nulls, 8, a->detail);
	values[9] = TimestampTzGetDatum(a->at);
	return ar_run(&insert_anomaly_plan, values, nulls, false) > 0;
}

void
detail_begin(StringInfo buf)
{
	initStringInfo(buf);
	appendStringInfoChar(buf, '{');
}

static void
detail_name(StringInfo buf, const char *name)
{
	if (buf->len > 1)
		appendStringInfoString(buf, ", ");
	escape_json(buf, name);
	appendStringInfoString(buf, ": ");
}

/* a string field; NULL values are left out */
void
detail_text(StringInfo buf, const char *name, const char *value)
{
	if (value == NULL)
		return;
	detail_name(buf, name);
	escape_json(buf, value);
}

/* a JSON field; NULL values are left out */
void
detail_jsonb(StringInfo buf, const char *name, Jsonb *value)
{
	if (value == NULL)
		return;
	detail_name(buf, name);
	(void) JsonbToCString(buf, &value->root, VARSIZE(value));
}

Jsonb *
detail_end(StringInfo buf)
{
	appendStringInfoChar(buf, '}');
	return DatumGetJsonbP(DirectFunctionCall1(jsonb_in, CStringGetDatum(buf->data)));
}
