"""The Referrals API's own package: model, rules, storage, identity and HTTP helpers.

The two function folders (`get_referral/`, `update_referral/`) stay thin and call into this package.
"""
