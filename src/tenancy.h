/*-------------------------------------------------------------------------
 *
 * tenancy.h
 *	  Which tenants the caller may act for: memberships, cached per backend.
 *
 * src/tenancy.h
 *
 *-------------------------------------------------------------------------
 */
#ifndef AGENTRETRY_TENANCY_H
#define AGENTRETRY_TENANCY_H

#include "fmgr.h"

/* the tenants a caller may act for */
typedef struct CallerTenants
{
	bool		enforced;		/* does any membership exist? */
	bool		all;			/* an admin or a superuser: every tenant */
	int			n;				/* its own memberships, sorted (strcmp) */
	char	  **tenants;
} CallerTenants;

extern const CallerTenants *caller_tenants(void);
extern bool caller_may_act_for(const char *tenant);
extern void check_caller_may_act_for(const char *tenant);

/* the tenant argument of a call: checked, authorized, NULL resolved */
extern char *arg_tenant(FunctionCallInfo fcinfo, int argno);
extern char *arg_tenant_or_all(FunctionCallInfo fcinfo, int argno);

#endif							/* AGENTRETRY_TENANCY_H */
