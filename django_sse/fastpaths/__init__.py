"""Fast paths that lean on what another project does not promise, each fenced in one module.

Every module here replaces something the ORM, the standard library or asgiref does in public,
because the public route costs a stream or a publish too much. Each one:

- names, in its docstring, the private behaviour it relies on and the versions it was checked on;
- checks that behaviour where it can and falls back to the plain, public route when it is
  missing or differs, so an upgrade makes us slower, never wrong;
- has a test that the fast and the plain route give the same result (rows, bytes, JSON).

``docs/internals.rst`` ("What we rely on that is not public API") lists them all. Nothing outside
this package touches another project's private internals.
"""
