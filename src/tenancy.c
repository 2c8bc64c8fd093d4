/*-------------------------------------------------------------------------
 *
 * tenancy.c
 *	  Which tenants the caller may act for.
 *
 * Memberships are rows of tenant_members (role, tenant), managed by the
 * admin role.  While there is none, agentretry is single-tenant: a call
 * without a tenant acts for "default", and a named tenant is not checked,
 * as before memberships existed.  From the first membership on, a caller
 * may act only for the tenants its role is a member of, directly or
 * through a role whose privileges it inherits; agentretry_admin and
 * superusers may act for every tenant.
 *
 * The caller is the role that calls, current_user as PostgreSQL sees it
 * (ar_caller(): agentretry's functions are SECURITY INVOKER and switch to
 * the tables' owner only for their queries), so that a SECURITY DEFINER
 * function or an index expression of another role acts with that role's
 * tenants.  Row level security on the tables follows current_user too
 * (tenant_visible()).
 *
 * Both answers are cached per backend, for one role at a time (a pooled
 * connection serves one role): whether any membership exists, and the
 * role's tenants as a sorted array searched in O(log n).  A change of
 * tenant_members (its statement trigger invalidates the relcache entry)
 * or of any role or role membership forgets them; the calls that act for
 * a tenant look for such changes first, so a removed membership binds
 * the next call, even in a transaction already open.  Under REPEATABLE
 * READ the answers are read once per transaction, with its snapshot.
 *
 * src/tenancy.c
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xact.h"
#include "catalog/namespace.h"
#include "catalog/pg_authid.h"
#include "catalog/pg_class.h"
#include "catalog/pg_type.h"
#include "fmgr.h"
#include "miscadmin.h"
#include "storage/proc.h"
#include "utils/acl.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/inval.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/syscache.h"

#include "cache.h"
#include "tenancy.h"

#define ADMIN_ROLE "agentretry_admin"

static RowsFlag members_flag =
	ROWS_FLAG("tenant_members",
			  "SELECT EXISTS (SELECT FROM agentretry.tenant_members)");

/*
 * $1 role: the tenants it is a member of, in strcmp order.  Memberships
 * of roles that no longer exist are ignored (DROP ROLE leaves their rows).
 */
static ArPlan role_tenants_plan = {
	"SELECT DISTINCT m.tenant COLLATE \"C\" FROM agentretry.tenant_members m"
	" WHERE m.role::pg_catalog.oid IN (SELECT r.oid FROM pg_catalog.pg_roles r"
	"  WHERE pg_catalog.pg_has_role($1, r.oid, 'USAGE'))"
	" ORDER BY 1",
	1, {OIDOID}
};

/*
 * The same for a superuser, for whom pg_has_role() is always true: the
 * memberships of the role itself and of the roles granted to it.
 */
static ArPlan superuser_tenants_plan = {
	"WITH RECURSIVE g(oid) AS (SELECT $1"
	" UNION SELECT a.roleid FROM pg_catalog.pg_auth_members a JOIN g ON a.member = g.oid)"
	"SELECT DISTINCT m.tenant COLLATE \"C\" FROM agentretry.tenant_members m"
	" WHERE m.role::pg_catalog.oid IN (SELECT g.oid FROM g)"
	" ORDER BY 1",
	1, {OIDOID}
};

/* one role's tenants, in their own memory context */
typedef struct RoleCache
{
	bool		valid;
	Oid			roleid;
	uint64		generation;		/* of members_flag when computed */
	LocalTransactionId lxid;	/* computed in (REPEATABLE READ: valid in) */
	MemoryContext cxt;
	CallerTenants t;
} RoleCache;

/*
 * The caller's role (ar_caller(), current_user: also the role whose row
 * level security tenant_visible() answers for)
 */
static RoleCache role_cache;
static uint64 role_changes = 0; /* counts invalidations of roles */
static bool callbacks_registered = false;

static void
roles_changed(Datum arg, int cacheid, uint32 hashvalue)
{
	role_cache.valid = false;
	role_cache.lxid = InvalidLocalTransactionId;
	role_changes++;
}

/*
 * Does any membership exist?  Answered from the cache without SPI when it
 * can be.  A schema without tenant_members (a library newer than the
 * schema, before ALTER EXTENSION UPDATE) has none.
 */
static bool
memberships_exist(void)
{
	ArSpi		spi;
	bool		v;

	if (cached_flag_peek(&members_flag, &v))
		return v;
	if (!OidIsValid(get_relname_relid("tenant_members",
									  get_namespace_oid("agentretry", false))))
		return false;
	ar_spi_begin(&spi);
	v = cached_flag(&members_flag);
	ar_spi_end(&spi);
	return v;
}

static bool
role_sees_all(Oid roleid)
{
	Oid			admin = get_role_oid(ADMIN_ROLE, true);

	return superuser_arg(roleid) ||
		(OidIsValid(admin) && has_privs_of_role(roleid, admin));
}

static void
load_role(RoleCache *c, Oid roleid)
{
	ArSpi		spi;
	Datum		values[1];
	uint64		got;
	uint64		i;
	uint64		changes = role_changes;
	MemoryContext old;

	if (!callbacks_registered)
	{
		CacheRegisterSyscacheCallback(AUTHOID, roles_changed, (Datum) 0);
		CacheRegisterSyscacheCallback(AUTHMEMROLEMEM, roles_changed, (Datum) 0);
		callbacks_registered = true;
	}
	if (c->cxt == NULL)
		c->cxt = AllocSetContextCreate(TopMemoryContext, "agentretry tenants",
									   ALLOCSET_SMALL_SIZES);
	c->valid = false;
	c->lxid = InvalidLocalTransactionId;	/* nothing half-built is reused */
	MemoryContextReset(c->cxt);
	c->t.tenants = NULL;
	c->t.n = 0;

	c->t.enforced = memberships_exist();
	ar_spi_begin(&spi);
	c->generation = members_flag.generation;
	c->t.all = role_sees_all(roleid);
	if (c->t.enforced)
	{
		values[0] = ObjectIdGetDatum(roleid);
		got = ar_run(superuser_arg(roleid) ? &superuser_tenants_plan :
					 &role_tenants_plan, values, NULL, true);
		old = MemoryContextSwitchTo(c->cxt);
		c->t.tenants = palloc(sizeof(char *) * Max(got, 1));
		for (i = 0; i < got; i++)
			c->t.tenants[i] = col_text(SPI_tuptable->vals[i],
									   SPI_tuptable->tupdesc, 1);
		MemoryContextSwitchTo(old);
		c->t.n = (int) got;
	}
	ar_spi_end(&spi);
	c->roleid = roleid;
	c->lxid = MyProc->lxid;

	/*
	 * Kept if nothing changed while loading, and (as cached_flag does) only
	 * when read with a fresh snapshot; under REPEATABLE READ, for the
	 * transaction that read it.
	 */
	c->valid = changes == role_changes && !IsolationUsesXactSnapshot();
}

static const CallerTenants *
role_tenants(RoleCache *c, Oid roleid)
{
	bool		fresh = c->roleid == roleid &&
		c->generation == members_flag.generation;

	/* as cached_flag: under REPEATABLE READ, once per transaction */
	if (IsolationUsesXactSnapshot() ?
		!(fresh && c->lxid == MyProc->lxid && c->cxt != NULL) :
		!(fresh && c->valid && members_flag.known))
		load_role(c, roleid);
	return &c->t;
}

/* the tenants of the caller (ar_caller(): current_user) */
const CallerTenants *
caller_tenants(void)
{
	static CallerTenants open = {false, true, 0, NULL};

	/* a membership changed by a transaction that committed binds at once */
	AcceptInvalidationMessages();
	if (!memberships_exist())
		return &open;
	return role_tenants(&role_cache, ar_caller());
}

static int
name_cmp(const void *a, const void *b)
{
	return strcmp(*(char *const *) a, *(char *const *) b);
}

static bool
tenants_include(const CallerTenants *t, const char *tenant)
{
	if (!t->enforced || t->all)
		return true;
	return t->n > 0 &&
		bsearch(&tenant, t->tenants, t->n, sizeof(char *), name_cmp) != NULL;
}

bool
caller_may_act_for(const char *tenant)
{
	return tenants_include(caller_tenants(), tenant);
}

/* 42501 unless the caller may act for tenant */
void
check_caller_may_act_for(const char *tenant)
{
	if (!caller_may_act_for(tenant))
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("role \"%s\" is not a member of tenant \"%s\"",
						GetUserNameFromId(ar_caller(), false), tenant),
				 errhint("An administrator adds members with agentretry.add_tenant_member().")));
}

/*
 * The tenant argument of a call: 1 to 128 bytes; a named tenant must be
 * one the caller may act for (42501); NULL is the caller's only tenant,
 * "default" while no membership exists, and 22023 when the caller may act
 * for several.
 */
char *
arg_tenant(FunctionCallInfo fcinfo, int argno)
{
	char	   *named = arg_name(fcinfo, argno, "tenant", NULL, AR_MAX_NAME_LEN);
	const CallerTenants *t = caller_tenants();

	if (named != NULL)
	{
		if (!tenants_include(t, named))
			check_caller_may_act_for(named);
		return named;
	}
	if (!t->enforced)
		return pstrdup(AR_DEFAULT_TENANT);
	if (t->n == 1)
		return pstrdup(t->tenants[0]);
	if (t->n == 0 && !t->all)
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("role \"%s\" is not a member of any tenant",
						GetUserNameFromId(ar_caller(), false)),
				 errhint("An administrator adds members with agentretry.add_tenant_member().")));
	ereport(ERROR,
			(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
			 errmsg("tenant is ambiguous"),
			 t->all ?
			 errdetail("Role \"%s\" may act for every tenant.",
					   GetUserNameFromId(ar_caller(), false)) :
			 errdetail("Role \"%s\" is a member of %d tenants.",
					   GetUserNameFromId(ar_caller(), false), t->n),
			 errhint("Name the tenant in the call.")));
	return NULL;				/* not reached */
}

/*
 * The tenant argument of a worker's call (claim_due, claim_verifications):
 * as arg_tenant, except that NULL, for a caller that may act for several
 * tenants, answers NULL: every tenant of the caller.
 */
char *
arg_tenant_or_all(FunctionCallInfo fcinfo, int argno)
{
	const CallerTenants *t;

	if (PG_ARGISNULL(argno))
	{
		t = caller_tenants();
		if (t->enforced && (t->all || t->n > 1))
			return NULL;
	}
	return arg_tenant(fcinfo, argno);
}

PG_FUNCTION_INFO_V1(agentretry_tenant_visible);

/*
 * tenant_visible(tenant text) returns boolean
 *
 * The row level security policy of every table with a tenant column: may
 * current_user see the rows of tenant?  True while no membership exists,
 * for agentretry_admin and superusers, and for the tenants of the role.
 */
Datum
agentretry_tenant_visible(PG_FUNCTION_ARGS)
{
	char	   *tenant;

	if (!memberships_exist())
		PG_RETURN_BOOL(true);
	if (PG_ARGISNULL(0))
		PG_RETURN_BOOL(role_tenants(&role_cache, GetUserId())->all);
	tenant = text_to_cstring(PG_GETARG_TEXT_PP(0));
	PG_RETURN_BOOL(tenants_include(role_tenants(&role_cache, GetUserId()),
								   tenant));
}

PG_FUNCTION_INFO_V1(agentretry_caller_tenants);

/*
 * caller_tenants() returns text[]
 *
 * The tenants the caller (current_user) may act for, for the filters of
 * agentretry's own SQL functions (stats): NULL when it may act for every
 * tenant (an admin, a superuser, or no membership at all).
 */
Datum
agentretry_caller_tenants(PG_FUNCTION_ARGS)
{
	const CallerTenants *t = caller_tenants();
	Datum	   *elems;
	int			i;

	if (!t->enforced || t->all)
		PG_RETURN_NULL();
	elems = palloc(sizeof(Datum) * Max(t->n, 1));
	for (i = 0; i < t->n; i++)
		elems[i] = CStringGetTextDatum(t->tenants[i]);
	PG_RETURN_ARRAYTYPE_P(construct_array(elems, t->n, TEXTOID, -1, false,
										  TYPALIGN_INT));
}

PG_FUNCTION_INFO_V1(agentretry_check_caller_tenant);

/*
 * check_caller_tenant(tenant text) returns void
 *
 * For agentretry's SQL functions (stats): raises 42501 unless the
 * caller (current_user) may act for tenant.
 */
Datum
agentretry_check_caller_tenant(PG_FUNCTION_ARGS)
{
	check_caller_may_act_for(text_to_cstring(PG_GETARG_TEXT_PP(0)));
	PG_RETURN_VOID();
}
