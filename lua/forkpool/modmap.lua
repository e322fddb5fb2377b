-- forkpool.modmap: the module map the codec uses to send values by name.
-- A function or a value that cannot be copied (a module with functions,
-- userdata, a table with a metatable) reachable from package.loaded
-- travels as its name ("cjson", "string\0format"), and the worker finds
-- it in its own package.loaded; see docs/wire-format.md.

local M = {}

-- Is t plain data: a table without a metatable holding only numbers,
-- strings, booleans and plain tables?  Such a table travels by value, so a
-- worker sees what the parent holds now (a kept-alive worker's copy is
-- stale; a table put into package.loaded by hand cannot be required).
-- memo: table -> verdict, shared across one build (a table being looked at
-- counts as plain, so cycles end).
local function plain_data(t, memo)
  local known = memo[t]
  if known ~= nil then return known end
  if getmetatable(t) ~= nil then memo[t] = false; return false end
  memo[t] = true
  for k, v in next, t do
    local tk, tv = type(k), type(v)
    if (tk == "table" and not plain_data(k, memo)) or (tv == "table" and not plain_data(v, memo))
        or (tk ~= "table" and tk ~= "number" and tk ~= "string" and tk ~= "boolean")
        or (tv ~= "table" and tv ~= "number" and tv ~= "string" and tv ~= "boolean") then
      memo[t] = false
      return false
    end
  end
  return true
end
M.plain_data = plain_data
-- Cold code, run interpreted: with this recursive walk JIT-compiled,
-- Debian's LuaJIT 2.1.0-beta3 crashed now and then (SIGSEGV in machine
-- code, in about 1 run in 10 of reliability_spec's "cannot be sent" tests;
-- none in 40 runs with it off).  Suspected, not proven, to be the cause.
if jit then jit.off(plain_data) end

-- Only functions and values that cannot be copied (modules with functions,
-- userdata, tables with metatables) travel by name: modules themselves
-- ("cjson"), then their fields ("string\0format").  Plain data travels by
-- value.  _G contributes only C functions: a user's global table or Lua
-- function must travel by value, not as the worker's stale copy.
local function build_modmap()
  local m, memo = {}, {}
  local function by_name(v, t)
    return t == "function" or t == "userdata" or (t == "table" and not plain_data(v, memo))
  end
  for name, mod in pairs(package.loaded) do
    local t = type(mod)
    if m[mod] == nil and by_name(mod, t) then
      m[mod] = name
    end
  end
  for name, mod in pairs(package.loaded) do
    if type(mod) == "table" then
      local is_g = (mod == _G)
      for k, v in pairs(mod) do
        local t = type(v)
        if type(k) == "string" and m[v] == nil and by_name(v, t) then
          if not is_g or (t == "function" and debug.getinfo(v, "S").what == "C") then
            m[v] = name .. "\0" .. k
          end
        end
      end
    end
  end
  return m
end

-- Rebuilt only when an entry of package.loaded was added, removed or
-- replaced (its names and values are remembered: a count alone misses a
-- module dropped and another added), or when asked (a value was refused).
local modmap_cache, modmap_seen, modmap_size
function M.get(fresh)
  local n, same = 0, modmap_seen ~= nil
  if same then
    for name, mod in pairs(package.loaded) do
      n = n + 1
      if modmap_seen[name] ~= mod then same = false; break end
    end
  end
  if fresh or not same or n ~= modmap_size then
    modmap_cache, modmap_seen, modmap_size = build_modmap(), {}, 0
    for name, mod in pairs(package.loaded) do
      modmap_seen[name] = mod
      modmap_size = modmap_size + 1
    end
  end
  return modmap_cache
end
if jit then jit.off(build_modmap); jit.off(M.get) end

return M
