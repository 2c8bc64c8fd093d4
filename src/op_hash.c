/*-------------------------------------------------------------------------
 *
 * op_hash.c
 *	  The operation fingerprint: SHA-256 of a canonical encoding of jsonb.
 *
 * Two arguments must hash alike exactly when they are equal as jsonb.  jsonb
 * already stores object keys sorted and deduplicated, so walking a value
 * with the jsonb iterator visits keys in a canonical order; what remains is
 * numeric scale (1.0 = 1 as jsonb), handled by hashing the normalised
 * numeric text.  Every item is written as a one-byte tag followed, for
 * strings and numbers, by a length prefix, so no two distinct values share
 * an encoding ("ab","c" differs from "a","bc"; a raw scalar differs from a
 * one-element array).
 *
 * src/op_hash.c
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "catalog/pg_type.h"
#include "fmgr.h"
#include "miscadmin.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/jsonb.h"
#include "utils/numeric.h"
#include "port/pg_bswap.h"

#include "agentretry.h"
#include "sha256.h"

typedef struct FingerprintState
{
	ArSha256	ctx;
	int			nignore;
	char	  **ignore;			/* top-level keys left out */
	int		   *ignore_len;
} FingerprintState;

static void hash_container(FingerprintState *hs, JsonbContainer *c, bool top);

static void
hash_bytes(FingerprintState *hs, const void *data, size_t len)
{
	ar_sha256_update(&hs->ctx, data, len);
}

static void
hash_tagged(FingerprintState *hs, char tag, const char *data, uint32 len)
{
	uint32		netlen = pg_hton32(len);	/* same bytes on every platform */

	hash_bytes(hs, &tag, 1);
	hash_bytes(hs, &netlen, sizeof(netlen));
	hash_bytes(hs, data, len);
}

static void
hash_tag(FingerprintState *hs, char tag)
{
	hash_bytes(hs, &tag, 1);
}

static void
hash_scalar(FingerprintState *hs, JsonbValue *v)
{
	switch (v->type)
	{
		case jbvNull:
			hash_tag(hs, 'z');
			break;
		case jbvBool:
			hash_tag(hs, v->val.boolean ? 't' : 'f');
			break;
		case jbvString:
			hash_tagged(hs, 's', v->val.string.val, v->val.string.len);
			break;
		case jbvNumeric:
			{
				/* normalised text drops trailing zeros: 1.0 and 1 agree */
				char	   *s = numeric_normalize(v->val.numeric);

				hash_tagged(hs, 'n', s, strlen(s));
				pfree(s);
				break;
			}
		case jbvBinary:
			hash_container(hs, v->val.binary.data, false);
			break;
		default:
			elog(ERROR, "agentretry: unexpected jsonb value type %d", (int) v->type);
	}
}

static bool
key_ignored(FingerprintState *hs, JsonbValue *k)
{
	int			i;

	for (i = 0; i < hs->nignore; i++)
	{
		if (hs->ignore_len[i] == k->val.string.len &&
			memcmp(hs->ignore[i], k->val.string.val, k->val.string.len) == 0)
			return true;
	}
	return false;
}

/*
 * Hash one container.  Nested containers come back from the iterator as
 * jbvBinary values (skipNested), so each level recurses with its own
 * iterator and an ignored key can be skipped together with its whole value.
 */
static void
hash_container(FingerprintState *hs, JsonbContainer *c, bool top)
{
	JsonbIterator *it;
	JsonbValue	v;
	JsonbIteratorToken tok;
	bool		skip_value = false;

	/* a value nested deeply enough would overflow the stack: 54001 instead */
	check_stack_depth();
	it = JsonbIteratorInit(c);
	while ((tok = JsonbIteratorNext(&it, &v, true)) != WJB_DONE)
	{
		switch (tok)
		{
			case WJB_BEGIN_OBJECT:
				hash_tag(hs, '{');
				break;
			case WJB_END_OBJECT:
				hash_tag(hs, '}');
				break;
			case WJB_BEGIN_ARRAY:
				hash_tag(hs, v.val.array.rawScalar ? '=' : '[');
				break;
			case WJB_END_ARRAY:
				hash_tag(hs, ']');
				break;
			case WJB_KEY:
				skip_value = top && hs->nignore > 0 && key_ignored(hs, &v);
				if (!skip_value)
					hash_tagged(hs, 'k', v.val.string.val, v.val.string.len);
				break;
			case WJB_VALUE:
				if (!skip_value)
					hash_scalar(hs, &v);
				skip_value = false;
				break;
			case WJB_ELEM:
				hash_scalar(hs, &v);
				break;
			default:
				elog(ERROR, "agentretry: unexpected jsonb iterator token %d", (int) tok);
		}
	}
}

static void
collect_ignored_keys(FingerprintState *hs, ArrayType *ignore)
{
	Datum	   *elems;
	bool	   *nulls;
	int			n,
				i;

	hs->nignore = 0;
	if (ignore == NULL)
		return;
	deconstruct_array(ignore, TEXTOID, -1, false, TYPALIGN_INT,
					  &elems, &nulls, &n);
	hs->ignore = palloc(sizeof(char *) * Max(n, 1));
	hs->ignore_len = palloc(sizeof(int) * Max(n, 1));
	for (i = 0; i < n; i++)
	{
		text	   *t;

		if (nulls[i])
			continue;
		t = DatumGetTextPP(elems[i]);
		hs->ignore[hs->nignore] = VARDATA_ANY(t);
		hs->ignore_len[hs->nignore] = VARSIZE_ANY_EXHDR(t);
		hs->nignore++;
	}
}

/* The fingerprint of args as a 32-byte bytea. */
bytea *
compute_op_hash(Jsonb *args, ArrayType *ignore)
{
	FingerprintState hs;
	bytea	   *out = (bytea *) palloc(VARHDRSZ + AR_SHA256_LEN);

	collect_ignored_keys(&hs, ignore);
	ar_sha256_init(&hs.ctx);
	hash_container(&hs, &args->root, true);
	ar_sha256_final(&hs.ctx, (uint8 *) VARDATA(out));
	SET_VARSIZE(out, VARHDRSZ + AR_SHA256_LEN);
	return out;
}

PG_FUNCTION_INFO_V1(agentretry_op_hash);

/*
 * op_hash(args jsonb, ignore text[] DEFAULT NULL) returns bytea
 *
 * SHA-256 fingerprint of the canonical form of args, leaving out the
 * top-level keys listed in ignore.  NULL args give NULL.
 */
Datum
agentretry_op_hash(PG_FUNCTION_ARGS)
{
	if (PG_ARGISNULL(0))
		PG_RETURN_NULL();
	if (!PG_ARGISNULL(1) && ARR_NDIM(PG_GETARG_ARRAYTYPE_P(1)) > 1)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("ignore must be a one-dimensional array of key names")));
	PG_RETURN_BYTEA_P(compute_op_hash(PG_GETARG_JSONB_P(0),
									  PG_ARGISNULL(1) ? NULL : PG_GETARG_ARRAYTYPE_P(1)));
}
