/*-------------------------------------------------------------------------
 *
 * sha256.h
 *	  Streaming SHA-256 on the caller's stack (sha256.c).
 *
 * src/sha256.h
 *
 *-------------------------------------------------------------------------
 */
#ifndef AGENTRETRY_SHA256_H
#define AGENTRETRY_SHA256_H

#define AR_SHA256_DIGEST_LEN 32

typedef struct ArSha256
{
	uint32		h[8];
	uint64		length;			/* bytes hashed so far */
	uint8		buf[64];
	size_t		used;			/* bytes waiting in buf */
} ArSha256;

extern void ar_sha256_init(ArSha256 *c);
extern void ar_sha256_update(ArSha256 *c, const void *data, size_t len);
extern void ar_sha256_final(ArSha256 *c, uint8 out[AR_SHA256_DIGEST_LEN]);

#endif							/* AGENTRETRY_SHA256_H */
