"""The conformance kit: checks any platform or carrier runs before it joins the federation.

``numfed conformance platform`` plays the gateway and the carriers against a platform;
``numfed conformance carrier`` checks a carrier's CarrierService. Each prints a table, can
write JUnit XML, and exits 0 only if every check passes. See docs/joining.md.
"""
