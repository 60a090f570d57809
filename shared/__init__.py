"""The Referrals API's own package: model, rules, storage, identity and HTTP helpers.

The function folders (`get_referral/`, `update_referral/`, `subscriptions/`, `deliver_events/`) stay
thin and call into this package.

Records loaded with the functions (settings, the caller, queries, what the store reads and writes)
are NamedTuples, not frozen dataclasses: as immutable and compared by value, and each class is built
in ~0.1-0.3 ms at import where a dataclass compiles generated methods for ~0.6-1.1 ms, which every
cold start pays (docs/benchmarks.md, P7). Mind what a tuple adds: a record also equals a plain tuple
of the same values, and iterates.
"""
