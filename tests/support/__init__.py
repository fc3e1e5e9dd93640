"""What the tests share besides fixtures: the frameworks under test, the apps they drive, the
fault proxy and the Markdown code-block runner. Test modules import from here, never from each
other or from a conftest."""
