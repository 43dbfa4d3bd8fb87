"""Command-line tools run from a checkout (`python tools/<name>.py`), beside the installed
purl_tf: benchmarks and studies (tools/bench), reports and exports. Not part of the
package; the tests import them as `tools.<name>` (pytest.ini puts the checkout on the path).
"""
