"""fakeapi: local fakes of the Stripe, Chargebee and Cello HTTP APIs for the
celloattr test suite.  See ../README.md.

Modules:
  forms       Rack-style form / query-string parsing shared by all providers
  common      Request/Response objects, JSON helpers, ids, clock
  recording   the list of recorded requests (GET /_control/requests)
  faults      fault injection table (POST /_control/fault)
  idempotency generic idempotency-key store (Stripe and Chargebee)
  server      HTTP handler, prefix routing, control API
  stripe, stripe_spec, stripe_search     the Stripe fake
  chargebee                              the Chargebee fake
  cello                                  the Cello API fake and Cello's
                                         Chargebee webhook receiver
"""
