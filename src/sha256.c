/*-------------------------------------------------------------------------
 *
 * sha256.c
 *	  SHA-256 (FIPS 180-4) for the operation fingerprint.
 *
 * PostgreSQL's cryptohash API allocates a context, registers it with the
 * resource owner and, under OpenSSL, sets up an EVP context on every call;
 * for the few hundred bytes of a tool call's arguments that set-up costs
 * more than the hashing, and claim() hashes on every call.  This is a plain
 * streaming implementation on the stack.  The digests are pinned by the
 * test suites against PostgreSQL's sha256().
 *
 * src/sha256.c
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "sha256.h"

static const uint32 K[64] = {
	0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1,
	0x923f82a4, 0xab1c5ed5, 0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3,
	0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174, 0xe49b69c1, 0xefbe4786,
	0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
	0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147,
	0x06ca6351, 0x14292967, 0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13,
	0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85, 0xa2bfe8a1, 0xa81a664b,
	0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
	0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a,
	0x5b9cca4f, 0x682e6ff3, 0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208,
	0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2
};

#define ROTR(x, n)	(((x) >> (n)) | ((x) << (32 - (n))))

static void
sha256_block(ArSha256 *c, const uint8 *p)
{
	uint32		w[64];
	uint32		a, b, d, e, f, g, h, cc;
	int			i;

	for (i = 0; i < 16; i++)
		w[i] = ((uint32) p[4 * i] << 24) | ((uint32) p[4 * i + 1] << 16) |
			((uint32) p[4 * i + 2] << 8) | (uint32) p[4 * i + 3];
	for (i = 16; i < 64; i++)
	{
		uint32		s0 = ROTR(w[i - 15], 7) ^ ROTR(w[i - 15], 18) ^ (w[i - 15] >> 3);
		uint32		s1 = ROTR(w[i - 2], 17) ^ ROTR(w[i - 2], 19) ^ (w[i - 2] >> 10);

		w[i] = w[i - 16] + s0 + w[i - 7] + s1;
	}

	a = c->h[0];
	b = c->h[1];
	cc = c->h[2];
	d = c->h[3];
	e = c->h[4];
	f = c->h[5];
	g = c->h[6];
	h = c->h[7];
	for (i = 0; i < 64; i++)
	{
		uint32		S1 = ROTR(e, 6) ^ ROTR(e, 11) ^ ROTR(e, 25);
		uint32		ch = (e & f) ^ (~e & g);
		uint32		t1 = h + S1 + ch + K[i] + w[i];
		uint32		S0 = ROTR(a, 2) ^ ROTR(a, 13) ^ ROTR(a, 22);
		uint32		maj = (a & b) ^ (a & cc) ^ (b & cc);
		uint32		t2 = S0 + maj;

		h = g;
		g = f;
		f = e;
		e = d + t1;
		d = cc;
		cc = b;
		b = a;
		a = t1 + t2;
	}
	c->h[0] += a;
	c->h[1] += b;
	c->h[2] += cc;
	c->h[3] += d;
	c->h[4] += e;
	c->h[5] += f;
	c->h[6] += g;
	c->h[7] += h;
}

void
ar_sha256_init(ArSha256 *c)
{
	static const uint32 init[8] = {
		0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a,
		0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19
	};

	memcpy(c->h, init, sizeof(init));
	c->length = 0;
	c->used = 0;
}

void
ar_sha256_update(ArSha256 *c, const void *data, size_t len)
{
	const uint8 *p = (const uint8 *) data;

	c->length += len;
	if (c->used > 0)
	{
		size_t		take = Min(len, sizeof(c->buf) - c->used);

		memcpy(c->buf + c->used, p, take);
		c->used += take;
		p += take;
		len -= take;
		if (c->used < sizeof(c->buf))
			return;
		sha256_block(c, c->buf);
		c->used = 0;
	}
	while (len >= sizeof(c->buf))
	{
		sha256_block(c, p);
		p += sizeof(c->buf);
		len -= sizeof(c->buf);
	}
	memcpy(c->buf, p, len);
	c->used = len;
}

void
ar_sha256_final(ArSha256 *c, uint8 out[AR_SHA256_DIGEST_LEN])
{
	uint64		bits = c->length * 8;
	int			i;

	c->buf[c->used++] = 0x80;
	if (c->used > 56)
	{
		memset(c->buf + c->used, 0, sizeof(c->buf) - c->used);
		sha256_block(c, c->buf);
		c->used = 0;
	}
	memset(c->buf + c->used, 0, 56 - c->used);
	for (i = 0; i < 8; i++)
		c->buf[56 + i] = (uint8) (bits >> (56 - 8 * i));
	sha256_block(c, c->buf);
	for (i = 0; i < 8; i++)
	{
		out[4 * i] = (uint8) (c->h[i] >> 24);
		out[4 * i + 1] = (uint8) (c->h[i] >> 16);
		out[4 * i + 2] = (uint8) (c->h[i] >> 8);
		out[4 * i + 3] = (uint8) c->h[i];
	}
}

