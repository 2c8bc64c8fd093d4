/*-------------------------------------------------------------------------
 *
 * events.h
 *	  The append-only trace in agentretry.events.
 *
 * src/events.h
 *
 *-------------------------------------------------------------------------
 */
#ifndef AGENTRETRY_EVENTS_H
#define AGENTRETRY_EVENTS_H

#include "operation.h"

typedef struct EventData
{
	const char *kind;
	const Operation *op;
	int			failure_class;	/* -1: none */
	int			failure_phase;	/* -1: none */
	const char *code;
	const char *message;
	const char *reason;
	int64		delay;			/* USEC_NONE: none */
	const char *actor;			/* the role of an operator action, or NULL */
	const char *receipt;		/* completed or observed, or NULL */
	const char *source;			/* of an observation, or NULL */
	Jsonb	   *detail;			/* of an observation, or NULL */
	TimestampTz at;
} EventData;

extern void record_event(const EventData *ev);
extern void record_simple_event(const char *kind, const Operation *op,
								const char *reason, TimestampTz at);
extern void record_actor_event(const char *kind, const Operation *op,
							   const char *reason, const char *message,
							   TimestampTz at);
extern void record_observation(const Operation *op, const char *answer,
							   const char *receipt, const char *source,
							   Jsonb *detail, TimestampTz at);
extern char *current_actor(void);

#endif							/* AGENTRETRY_EVENTS_H */
