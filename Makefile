# agentretry: PGXS build
EXTENSION = agentretry
MODULE_big = agentretry
OBJS = \
	src/agentretry.o \
	src/anomaly.o \
	src/approval.o \
	src/backoff.o \
	src/cache.o \
	src/budget.o \
	src/claim.o \
	src/decide.o \
	src/events.o \
	src/guard.o \
	src/lease.o \
	src/op_hash.o \
	src/operator.o \
	src/operation.o \
	src/observe.o \
	src/outcome.o \
	src/policy.o \
	src/reconcile.o \
	src/run.o \
	src/runs.o \
	src/saga.o \
	src/schedule.o \
	src/sha256.o \
	src/spi.o \
	src/stats.o \
	src/sweep.o \
	src/tenancy.o \
	src/transition.o \
	src/types.o \
	src/validate.o

DATA = $(wildcard sql/agentretry--*.sql)
PGFILEDESC = "agentretry - safe retries for side-effecting tool calls"

# pg_regress suite: sql/NAME.sql against expected/NAME.out
REGRESS = setup op_hash claim_outcomes complete_fail resolve_lease errors security readme_examples readme_runs budget_cache scheduling sweep operator upgrade runs compensation approvals reconcile stats bad_input guard tenancy
REGRESS_OPTS = --inputdir=. --outputdir=build/regress

# isolation specs: test/isolation/specs/NAME.spec
ISOLATION = claim_pattern_a claim_pattern_b fenced_complete expired_lease_race lease_takeover_race verify_race claim_after_wait repeatable_read claim_due_concurrent sweep_claim_race sweep_overlap requeue_claim_due sweep_notify policy_cache budget_concurrent_debits budget_rollback budget_ratio_held compensate_concurrent compensate_late_complete claim_new_step_vs_compensate checkpoint_conflict approve_reject_race fail_vs_compensate saga_advance_skipped gate_cache observe_complete_race observe_resolve_race reconcile_overlap claim_verifications_concurrent budget_exact_gather tenancy_membership_change claim_due_round_robin
ISOLATION_OPTS = --inputdir=test/isolation --outputdir=build/isolation

PG_CONFIG ?= pg_config
PG_CPPFLAGS = -Isrc
PG_CFLAGS = -Wall -Wextra -Wno-unused-parameter -Wno-missing-field-initializers -Werror

PGXS := $(shell $(PG_CONFIG) --pgxs)
include $(PGXS)

installcheck: | build/regress build/isolation
build/regress build/isolation:
	mkdir -p $@

EXTRA_CLEAN = build

# the two halves of installcheck, for test/run.sh to count separately
installcheck-regress: | build/regress
	$(pg_regress_installcheck) $(REGRESS_OPTS) $(REGRESS)

installcheck-isolation: | build/isolation
	$(pg_isolation_regress_installcheck) $(ISOLATION_OPTS) $(ISOLATION)

.PHONY: installcheck-regress installcheck-isolation

# every object depends on the headers (PGXS does not track them)
$(OBJS): $(wildcard src/*.h)
