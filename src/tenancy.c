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
 * The caller is the session's role (the login role, or the one chosen with
 * SET ROLE): agentretry's functions run as their owner, so the role they
 * check is the one outside them (GetOuterUserId).  A SECURITY DEFINER
 * function of the user's own does not change it.  Row level security on
 * the tables follows current_user, as PostgreSQL's policies do
 * (tenant_visible()).
 *
 * Both answers are cached per backend, for one role at a time (a pooled
 * connection serves one role): whether any membership exists, and the
 * role's tenants as a sorted array searched in O(log n).  A change of
 * tenant_members (its statement trigger invalidates the relcache entry)
 * or of any role or role membership forgets them, at the start of the
 * next transaction of every backend.
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

/* $1 role: the tenants it is a member of, in strcmp order */
static ArPlan role_tenants_plan = {
	"SELECT DISTINCT m.tenant COLLATE \"C\" FROM agentretry.tenant_members m"
	" WHERE pg_catalog.pg_has_role($1, m.role::pg_catalog.oid, 'USAGE')"
	" ORDER BY 1",
	1, {OIDOID}
};

/* one role's tenants, in TopMemoryContext */
typedef struct RoleCache
{
	bool		valid;
	Oid			roleid;
	uint64		generation;		/* of members_flag when computed */
	CallerTenants t;
} RoleCache;

static RoleCache caller_cache;	/* the session's role */
static RoleCache current_cache; /* current_user, for row level security */
static bool callbacks_registered = false;

/*
 * Reading tenant_members for tenant_visible(), which runs as the role
 * reading a table, must neither need that role's privileges nor meet the
 * table's own policy: the reads run as the table's owner.
 */
static Oid
members_owner(void)
{
	static Oid	owner = InvalidOid;

	if (!OidIsValid(owner))
	{
		Oid			relid = get_relname_relid("tenant_members",
											  get_namespace_oid("agentretry", false));
		HeapTuple	tup = SearchSysCache1(RELOID, ObjectIdGetDatum(relid));

		if (!HeapTupleIsValid(tup))
			elog(ERROR, "cache lookup failed for relation %u", relid);
		owner = ((Form_pg_class) GETSTRUCT(tup))->relowner;
		ReleaseSysCache(tup);
	}
	return owner;
}

/* ar_spi_begin() as the owner of tenant_members */
static void
owner_spi_begin(ArSpi *spi, Oid *save_user, int *save_sec)
{
	GetUserIdAndSecContext(save_user, save_sec);
	SetUserIdAndSecContext(members_owner(),
						   *save_sec | SECURITY_LOCAL_USERID_CHANGE);
	ar_spi_begin(spi);
}

static void
owner_spi_end(ArSpi *spi, Oid save_user, int save_sec)
{
	ar_spi_end(spi);
	SetUserIdAndSecContext(save_user, save_sec);
}

static void
roles_changed(Datum arg, int cacheid, uint32 hashvalue)
{
	caller_cache.valid = false;
	current_cache.valid = false;
}

/*
 * Does any membership exist?  Answered from the cache without SPI when it
 * can be.
 */
static bool
memberships_exist(void)
{
	ArSpi		spi;
	Oid			save_user;
	int			save_sec;
	bool		v;

	if (members_flag.known && !IsolationUsesXactSnapshot())
		return members_flag.value;
	owner_spi_begin(&spi, &save_user, &save_sec);
	v = cached_flag(&members_flag);
	owner_spi_end(&spi, save_user, save_sec);
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
	Oid			save_user;
	int			save_sec;
	Datum		values[1];
	uint64		got;
	uint64		i;
	MemoryContext old;

	if (!callbacks_registered)
	{
		CacheRegisterSyscacheCallback(AUTHOID, roles_changed, (Datum) 0);
		CacheRegisterSyscacheCallback(AUTHMEMROLEMEM, roles_changed, (Datum) 0);
		callbacks_registered = true;
	}
	if (c->t.tenants != NULL)
	{
		for (i = 0; i < (uint64) c->t.n; i++)
			pfree(c->t.tenants[i]);
		pfree(c->t.tenants);
	}
	c->t.tenants = NULL;
	c->t.n = 0;
	c->valid = false;

	owner_spi_begin(&spi, &save_user, &save_sec);
	c->t.enforced = cached_flag(&members_flag);
	c->generation = members_flag.generation;
	c->t.all = role_sees_all(roleid);
	if (c->t.enforced)
	{
		values[0] = ObjectIdGetDatum(roleid);
		got = ar_run(&role_tenants_plan, values, NULL, true);
		old = MemoryContextSwitchTo(TopMemoryContext);
		c->t.tenants = palloc(sizeof(char *) * Max(got, 1));
		for (i = 0; i < got; i++)
			c->t.tenants[i] = col_text(SPI_tuptable->vals[i],
									   SPI_tuptable->tupdesc, 1);
		MemoryContextSwitchTo(old);
		c->t.n = (int) got;
	}
	owner_spi_end(&spi, save_user, save_sec);
	c->roleid = roleid;
	/* as cached_flag: kept only when read with a fresh snapshot */
	c->valid = !IsolationUsesXactSnapshot();
}

static const CallerTenants *
role_tenants(RoleCache *c, Oid roleid)
{
	if (!c->valid || c->roleid != roleid || !members_flag.known ||
		c->generation != members_flag.generation ||
		IsolationUsesXactSnapshot())
		load_role(c, roleid);
	return &c->t;
}

/* the tenants of the session's role */
const CallerTenants *
caller_tenants(void)
{
	static CallerTenants open = {false, true, 0, NULL};

	if (!memberships_exist())
		return &open;
	return role_tenants(&caller_cache, GetOuterUserId());
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
						GetUserNameFromId(GetOuterUserId(), false), tenant),
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
						GetUserNameFromId(GetOuterUserId(), false)),
				 errhint("An administrator adds members with agentretry.add_tenant_member().")));
	ereport(ERROR,
			(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
			 errmsg("tenant is ambiguous"),
			 t->all ?
			 errdetail("Role \"%s\" may act for every tenant.",
					   GetUserNameFromId(GetOuterUserId(), false)) :
			 errdetail("Role \"%s\" is a member of %d tenants.",
					   GetUserNameFromId(GetOuterUserId(), false), t->n),
			 errhint("Name the tenant with tenant => ....")));
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
		if (t->enforced && (t->all ? t->n != 1 : t->n > 1))
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
		PG_RETURN_BOOL(role_tenants(&current_cache, GetUserId())->all);
	tenant = text_to_cstring(PG_GETARG_TEXT_PP(0));
	PG_RETURN_BOOL(tenants_include(role_tenants(&current_cache, GetUserId()),
								   tenant));
}

PG_FUNCTION_INFO_V1(agentretry_caller_tenants);

/*
 * caller_tenants() returns text[]
 *
 * The tenants the session's role may act for, for the filters of
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
 * session's role may act for tenant.
 */
Datum
agentretry_check_caller_tenant(PG_FUNCTION_ARGS)
{
	check_caller_may_act_for(text_to_cstring(PG_GETARG_TEXT_PP(0)));
	PG_RETURN_VOID();
}
