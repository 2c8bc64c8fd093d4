/*-------------------------------------------------------------------------
 *
 * validate.c
 *	  Argument checks shared by the SQL-callable functions.
 *
 * Every check runs before any row is read or written, so a rejected call
 * changes nothing.  Limits are those of the product contract: keys of 1 to
 * 512 bytes, payloads up to agentretry.max_payload, leases of 1 second to
 * 1 day.
 *
 * src/validate.c
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "fmgr.h"
#include "utils/builtins.h"
#include "utils/timestamp.h"

#include "agentretry.h"

#define LEASE_MIN_USEC	USECS_PER_SEC
#define LEASE_MAX_USEC	USECS_PER_DAY

void
check_not_null(FunctionCallInfo fcinfo, int argno, const char *what)
{
	if (PG_ARGISNULL(argno))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("%s must not be null", what)));
}

/* idempotency key: required, 1 to 512 bytes */
char *
arg_key(FunctionCallInfo fcinfo, int argno)
{
	text	   *t;
	int			len;

	check_not_null(fcinfo, argno, "key");
	t = PG_GETARG_TEXT_PP(argno);
	len = VARSIZE_ANY_EXHDR(t);
	if (len < 1 || len > AR_MAX_KEY_LEN)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("key must be 1 to %d bytes long", AR_MAX_KEY_LEN),
				 errdetail("The key is %d bytes long.", len)));
	return text_to_cstring(t);
}

/*
 * A short name (tool, owner, run id, ...): optional with a default, not
 * empty, at most maxlen bytes.
 */
char *
arg_name(FunctionCallInfo fcinfo, int argno, const char *what,
		 const char *dflt, int maxlen)
{
	text	   *t;
	int			len;

	if (PG_ARGISNULL(argno))
		return dflt ? pstrdup(dflt) : NULL;
	t = PG_GETARG_TEXT_PP(argno);
	len = VARSIZE_ANY_EXHDR(t);
	if (len < 1 || len > maxlen)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("%s must be 1 to %d bytes long", what, maxlen),
				 errdetail("The %s is %d bytes long.", what, len)));
	return text_to_cstring(t);
}

/*
 * A tool name: like arg_name, and not "*", which stands for every tool in
 * tenant policies.
 */
char *
arg_tool(FunctionCallInfo fcinfo, int argno)
{
	char	   *tool = arg_name(fcinfo, argno, "tool", AR_DEFAULT_TOOL, AR_MAX_NAME_LEN);

	if (strcmp(tool, "*") == 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("tool name \"*\" is reserved"),
				 errhint("In tenant policies \"*\" stands for every tool of the tenant.")));
	return tool;
}

/* free text (a failure message): optional, bounded by max_payload */
char *
arg_optional_text(FunctionCallInfo fcinfo, int argno, const char *what)
{
	text	   *t;

	if (PG_ARGISNULL(argno))
		return NULL;
	t = PG_GETARG_TEXT_PP(argno);
	if (VARSIZE_ANY_EXHDR(t) > (Size) ar_max_payload)
		ereport(ERROR,
				(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
				 errmsg("%s exceeds agentretry.max_payload", what),
				 errdetail("The %s value is %d bytes; the limit is %d bytes.",
						   what, (int) VARSIZE_ANY_EXHDR(t), ar_max_payload)));
	return text_to_cstring(t);
}

int64
arg_lease_token(FunctionCallInfo fcinfo, int argno)
{
	check_not_null(fcinfo, argno, "lease_token");
	return PG_GETARG_INT64(argno);
}

/* lease or extension: 1 second to 1 day; USEC_NONE when NULL */
int64
arg_lease_usec(FunctionCallInfo fcinfo, int argno, const char *what)
{
	int64		usec;

	if (PG_ARGISNULL(argno))
		return USEC_NONE;
	usec = interval_usec(PG_GETARG_INTERVAL_P(argno));
	if (usec < LEASE_MIN_USEC || usec > LEASE_MAX_USEC)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("%s must be between 1 second and 1 day", what),
				 errdetail("The %s is %s.", what,
						   DatumGetCString(DirectFunctionCall1(interval_out,
															   PG_GETARG_DATUM(argno))))));
	return usec;
}

/* args, result, compensate_args: at most agentretry.max_payload bytes */
Jsonb *
arg_payload(FunctionCallInfo fcinfo, int argno, const char *what,
			bool required)
{
	Jsonb	   *j;

	if (PG_ARGISNULL(argno))
	{
		if (required)
			check_not_null(fcinfo, argno, what);
		return NULL;
	}
	j = PG_GETARG_JSONB_P(argno);
	if (VARSIZE(j) > (Size) ar_max_payload)
		ereport(ERROR,
				(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
				 errmsg("%s exceeds agentretry.max_payload", what),
				 errdetail("The %s value is %u bytes; the limit is %d bytes.",
						   what, (unsigned) VARSIZE(j), ar_max_payload),
				 errhint("Store large payloads elsewhere and pass a reference.")));
	return j;
}

/* a batch size: 1 to limit */
int
arg_max(FunctionCallInfo fcinfo, int argno, int limit)
{
	int			max;

	check_not_null(fcinfo, argno, "max");
	max = PG_GETARG_INT32(argno);
	if (max < 1 || max > limit)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("max must be between 1 and %d", limit),
				 errdetail("max is %d.", max)));
	return max;
}
