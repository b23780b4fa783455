"""Sandbox implementations of the platform's two outside HTTP services.

A Stripe-like payment gateway (``/payments/v1``) and a parcel carrier (``/carrier/v1``), served by
one FastAPI app (:func:`sandbox.app.create_app`) with its own ``sandbox_*`` tables, so the platform
can be exercised end to end, and under injected faults, without a third party.
"""
