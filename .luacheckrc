-- luacheck configuration (Debian's lua-check): `luacheck lua spec bench examples`,
-- run by tools/lint.sh.
--
-- Everything runs under LuaJIT 2.1: its standard globals include jit and
-- bit (ffi, table.new, string.buffer are required as modules).
std = "luajit"

-- The code is written to about 100 columns; a few tables and messages go a
-- little past that.  Length is counted in characters, not bytes.
max_line_length = 120

-- busted's globals (describe, it, assert, spy, ...) in the specs, their
-- helpers and fixtures.
files["spec/**"] = { std = "+busted" }

-- The leak-check fixture must leave a pool reachable after its spec ends
-- (spec/engine_spec.lua checks that the helper catches it), so it keeps the
-- pool in a global on purpose.
files["spec/fixtures/leaky_fixture.lua"] = { globals = { "LEAKED_POOL" } }
