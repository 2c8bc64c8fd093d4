/*-------------------------------------------------------------------------
 *
 * policy.h
 *	  Retry policies: tier defaults merged with a tool's registered fields
 *	  and the tenant's overrides.
 *
 * src/policy.h
 *
 *-------------------------------------------------------------------------
 */
#ifndef AGENTRETRY_POLICY_H
#define AGENTRETRY_POLICY_H

#include "spi.h"

/* Fields in effective_policy() order. */
typedef enum PolicyField
{
	PF_IDEMPOTENCY,
	PF_SIDE_EFFECT,
	PF_MAX_ATTEMPTS,
	PF_BASE_DELAY,
	PF_MAX_DELAY,
	PF_MULTIPLIER,
	PF_JITTER,
	PF_DEADLINE,
	PF_LEASE,
	PF_TTL,
	PF_COMPENSATE_TOOL,
	PF_REQUIRES_APPROVAL,
	PF_COUNT
} PolicyField;

/* where a merged field came from, lowest precedence first */
typedef enum PolicySource
{
	SRC_DEFAULT,
	SRC_TOOL,
	SRC_TENANT,
	SRC_TENANT_TOOL
} PolicySource;

typedef struct Policy
{
	bool		registered;
	Idempotency idempotency;
	SideEffect	side_effect;
	int			max_attempts;
	int64		base_delay;
	int64		max_delay;
	double		multiplier;
	JitterMode	jitter;
	int64		deadline;		/* USEC_NONE: no deadline */
	int64		lease;
	int64		ttl;
	char	   *compensate_tool;	/* or NULL */
	bool		requires_approval;
	PolicySource source[PF_COUNT];
} Policy;

/*
 * The policy columns of a query over operations o: the tool's row (t), the
 * tenant's row for every tool (pw, tool '*') and for this tool (pt), each
 * a level of AR_POLICY_LEVEL.  policy_from_columns() reads them.
 */
#define AR_POLICY_LEVEL(x) \
	x ".max_attempts, " x ".base_delay, " x ".max_delay, " x ".multiplier, " \
	x ".jitter::text, " x ".deadline, " x ".lease, " x ".ttl, " x ".compensate_tool, " \
	x ".requires_approval"
#define AR_POLICY_LEVEL_NCOLUMNS 10
#define AR_POLICY_COLUMNS \
	"t.idempotency::text, t.side_effect::text, " AR_POLICY_LEVEL("t") ", " \
	AR_POLICY_LEVEL("pw") ", " AR_POLICY_LEVEL("pt")
#define AR_POLICY_NCOLUMNS (2 + 3 * AR_POLICY_LEVEL_NCOLUMNS)
#define AR_POLICY_JOINS \
	" LEFT JOIN agentretry.tools t ON t.name = o.tool" \
	" LEFT JOIN agentretry.tenant_policies pw" \
	"   ON pw.tenant = o.tenant AND pw.tool = '*'" \
	" LEFT JOIN agentretry.tenant_policies pt" \
	"   ON pt.tenant = o.tenant AND pt.tool = o.tool"

extern const char *const policy_source_labels[];
extern void policy_tier_defaults(Policy *p, SideEffect side_effect);
extern void policy_from_columns(Policy *p, HeapTuple tup, TupleDesc desc,
								int firstcol);
extern bool tenant_policies_exist(void);
extern bool tool_may_require_approval(const char *tool);

#endif							/* AGENTRETRY_POLICY_H */
