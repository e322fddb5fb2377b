-- The examples (examples/*.lua) run in their quick mode and end with
-- their own "ok: ..." line, which each prints only after checking its
-- parallel results against a sequential run.  Each runs in a child luajit
-- (killed after a deadline) inside a temporary directory, since some
-- write their outputs where they are run.
local root
do
  local p = io.popen("pwd")
  root = p:read("*l")
  p:close()
end

local function run_example(name)
  local dir = os.tmpname()
  os.remove(dir)
  os.execute("mkdir " .. dir)
  local lpath = root .. "/lua/?.lua;" .. root .. "/lua/?/init.lua;;"
  local cpath = root .. "/build/?.so;;"
  local cmd = ("cd %s && FORKPOOL_EXAMPLE_QUICK=1 LUA_PATH='%s' LUA_CPATH='%s' timeout -s KILL 120 "
    .. "luajit %s/examples/%s.lua 2>&1; echo \"__rc=$?\""):format(dir, lpath, cpath, root, name)
  local p = io.popen(cmd)
  local out = p:read("*a")
  p:close()
  os.execute("rm -rf " .. dir)
  local rc = tonumber(out:match("__rc=(%d+)%s*$"))
  out = out:gsub("__rc=%d+%s*$", "")
  return rc, out
end

describe("examples", function()
  for _, name in ipairs({ "assets", "image_filter", "jsonl", "mandelbrot", "wordcount" }) do
    it(name .. ".lua runs and checks its results", function()
      local rc, out = run_example(name)
      assert.are.equal(0, rc, out)
      local last = out:match("([^\n]*)\n?$")
      assert.matches("^ok: ", last, 1, false)
    end)
  end
end)
