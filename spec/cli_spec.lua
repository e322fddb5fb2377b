-- `forkpool map` (bin/forkpool, lua/forkpool/cli*.lua): every option, exit
-- status and error path, run as a child process (under `timeout`) on real
-- files and pipes.
local util = require "support.util"
local cjson = require "cjson"

local BIN = "bin/forkpool"
local TIMEOUT = 120   -- seconds any one command may take

local dir   -- a scratch directory per test file

local function path(name) return dir .. "/" .. name end

local function write(name, s)
  local f = assert(io.open(path(name), "wb"))
  f:write(s)
  f:close()
  return path(name)
end

local function read(p)
  local f = io.open(p, "rb")
  if not f then return nil end
  local s = f:read("*a")
  f:close()
  return s
end

local function q(s) return "'" .. s:gsub("'", "'\\''") .. "'" end

-- sh(cmd) -> exit status, stdout, stderr of a shell command line, killed
-- after TIMEOUT seconds.
local function sh(cmd)
  local out, err = path("stdout"), path("stderr")
  local p = io.popen(("timeout -s KILL %d sh -c %s >%s 2>%s; echo $?"):format(TIMEOUT, q(cmd), out, err))
  local rc = tonumber(p:read("*a"))
  p:close()
  return rc, read(out), read(err)
end

-- fp(args [, stdin_cmd]) -> status, stdout, stderr of `forkpool` with args
-- (a string, as given to the shell); stdin from /dev/null unless
-- stdin_cmd is piped in.
local function fp(args, stdin_cmd)
  if stdin_cmd then return sh(stdin_cmd .. " | " .. BIN .. " " .. args) end
  return sh(BIN .. " " .. args .. " </dev/null")
end

-- Lines of s as an array.
local function lines(s)
  local t = {}
  for l in s:gmatch("([^\n]*)\n") do t[#t + 1] = l end
  return t
end

-- n JSON records {"i": k} for k = from..to, one per line.
local function records(from, to)
  local t = {}
  for k = from, to do t[#t + 1] = ('{"i":%d}\n'):format(k) end
  return table.concat(t)
end

-- Scripts used by many tests.  MANY's results are objects with many keys
-- (which ones depends on the record), nested objects, and numbers that need
-- 15-17 digits: the output must still be the same bytes in every process
-- (keys are written sorted, numbers exactly), whatever order pairs() visits
-- a table in (LuaJIT seeds its string hashes per process).
local DOUBLE      -- i -> [i, 2i]
local NUMBER      -- i -> i
local MANY        -- i -> an object with ~20 keys
local MANY_SRC = [[
  return function(r)
    local i = r.i
    local t = { i = i, double = 2 * i, name = "rec/" .. i, ok = i % 2 == 0, frac = i / 7,
      big = i * 1e12 + 0.5, neg = -i, nested = { z = 1, y = { i, "a/b" }, x = { c = 3, b = 2, a = 1 } } }
    for k = 1, 12 do t["k" .. (i * 7 + k * 13) % 40] = k end
    t[i % 5 + 1] = "number key"
    return t
  end
]]

setup(function()
  dir = os.tmpname()
  os.remove(dir)
  assert(os.execute("mkdir -p " .. dir) == 0)
  DOUBLE = write("double.lua", "return function(r) return { r.i, 2 * r.i } end\n")
  NUMBER = write("number.lua", "return function(r) return r.i end\n")
  MANY = write("many.lua", MANY_SRC)
end)

teardown(function()
  os.execute("rm -rf " .. q(dir))
end)

-- The expected output of DOUBLE over records(from, to).
local function doubled(from, to)
  local t = {}
  for k = from, to do t[#t + 1] = ("[%d,%d]\n"):format(k, 2 * k) end
  return table.concat(t)
end

describe("forkpool map", function()
  describe("help, version and usage errors", function()
    it("--help prints the usage and every option, exit 0", function()
      local rc, out = fp("--help")
      assert.are.equal(0, rc)
      assert.matches("usage: forkpool map %[OPTIONS%] SCRIPT.lua %[FILE ...%]", out)
      for _, o in ipairs { "--jobs", "--output", "--unordered", "--raw", "--flat", "--chunk-size",
        "--task-timeout", "--max-retries", "--progress", "--errors", "--error-log", "--shard",
        "--resume", "--set", "--help", "--version" } do
        assert.truthy(out:find(o, 1, true), o)
      end
      local rc2, out2 = fp("map --help")
      assert.are.equal(0, rc2)
      assert.are.equal(out, out2)
    end)

    it("--version prints forkpool._VERSION", function()
      local rc, out = fp("--version")
      assert.are.equal(0, rc)
      assert.are.equal(require("forkpool")._VERSION .. "\n", out)
    end)

    it("usage errors exit 2 with one line and a hint to --help", function()
      local input = write("in.jsonl", records(1, 3))
      local cases = {
        { "", "a command expected" },
        { "reduce " .. DOUBLE, "unknown command 'reduce'" },
        { "map", "the script is missing" },
        { "map --frobnicate " .. DOUBLE, "unknown option '%-%-frobnicate'" },
        { "map -x " .. DOUBLE, "unknown option '%-x'" },
        { "map -j 0 " .. DOUBLE, "option %-%-jobs: a positive integer expected, got '0'" },
        { "map --jobs=two " .. DOUBLE, "option %-%-jobs: a positive integer expected" },
        { "map " .. DOUBLE .. " -j", "option %-j needs a value" },
        { "map --chunk-size 0 " .. DOUBLE, "option %-%-chunk%-size" },
        { "map --task-timeout -1 " .. DOUBLE, "option %-%-task%-timeout" },
        { "map --max-retries x " .. DOUBLE, "option %-%-max%-retries" },
        { "map --errors maybe " .. DOUBLE, "option %-%-errors: 'fail' or 'skip' expected" },
        { "map --shard 0/3 " .. DOUBLE, "option %-%-shard: K/N with 1 <= K <= N" },
        { "map --shard 4/3 " .. DOUBLE, "option %-%-shard: K/N with 1 <= K <= N" },
        { "map --shard 2 " .. DOUBLE, "option %-%-shard: K/N expected" },
        { "map --set novalue " .. DOUBLE, "option %-%-set: KEY=VALUE expected" },
        { "map --raw=yes " .. DOUBLE, "option %-%-raw takes no value" },
        { "map --resume " .. DOUBLE, "%-%-resume needs %-o FILE" },
        { "map --resume --unordered -o " .. path("o") .. " " .. DOUBLE, "%-%-resume works in input order only" },
        { "map --error-log " .. path("e") .. " " .. DOUBLE, "%-%-error%-log needs %-%-errors skip" },
        { "map " .. DOUBLE .. " " .. path("missing.jsonl"), "cannot read the input: .*missing.jsonl" },
        { "map " .. DOUBLE .. " " .. input .. " " .. dir, "cannot read the input: .*Is a directory" },
        { "map -o " .. dir .. "/no/such/dir/out " .. DOUBLE .. " " .. input, "cannot open the output" },
        { "map -o " .. dir .. "/./in.jsonl " .. DOUBLE .. " " .. input, "the output .* is also an input" },
      }
      for _, c in ipairs(cases) do
        local rc, out, err = fp(c[1])
        assert.are.equal(2, rc, c[1] .. ": " .. err)
        assert.are.equal("", out, c[1])
        assert.are.equal(1, #lines(err), err)
        assert.are.equal("forkpool: ", err:sub(1, 10), err)
        assert.matches(" %(see 'forkpool map %-%-help'%)\n$", err)
        assert.matches(c[2], err, 1, false, c[1])
      end
    end)

    it("a script that cannot be used is reported before any input is read, naming it, exit 2", function()
      -- a FIFO nobody writes to: opening it for reading would block
      local fifo = path("fifo")
      assert(os.execute("mkfifo " .. fifo) == 0)
      local cases = {
        { "syntax.lua", "return function(r\n", "syntax.lua:2:" },
        { "returns42.lua", "return 42\n", "must return a function or a table" },
        { "nomap.lua", "return { worker_init = function() end }\n", "no 'map' function" },
        { "badinit.lua", "return { map = print, worker_init = 3 }\n", "'worker_init' is not a function" },
        { "raises.lua", "error('no config here')\n", "no config here" },
      }
      for _, c in ipairs(cases) do
        local script = write(c[1], c[2])
        local rc, out, err = fp("map " .. script .. " " .. fifo)
        assert.are.equal(2, rc, c[1] .. ": " .. err)
        assert.are.equal("", out)
        assert.truthy(err:find(c[1], 1, true), err)
        assert.truthy(err:find(c[3], 1, true), err)
        assert.are.equal(1, #lines(err), err)
      end
      local rc, _, err = fp("map " .. path("nosuch.lua") .. " " .. fifo)
      assert.are.equal(2, rc)
      assert.matches("cannot open the script .*nosuch.lua", err)
      os.remove(fifo)
    end)
  end)

  describe("mapping", function()
    it("maps files in order, stdin for '-' or none, writes one line per record in input order", function()
      local a = write("a.jsonl", records(1, 1000))
      local b = write("b.jsonl", records(1001, 1500))
      local rc, out, err = fp("map " .. DOUBLE .. " " .. a .. " - " .. b, "cat " .. path("b.jsonl"))
      assert.are.equal(0, rc, err)
      assert.are.equal(doubled(1, 1000) .. doubled(1001, 1500) .. doubled(1001, 1500), out)
      assert.are.equal("", err)
      rc, out = fp("map " .. DOUBLE, "cat " .. a)
      assert.are.equal(0, rc)
      assert.are.equal(doubled(1, 1000), out)
    end)

    it("keeps input order when early blocks are slow, over many blocks, for every -j and --chunk-size", function()
      local input = write("many.jsonl", records(1, 20000))
      local slow = write("slow_first.lua", [[
        local ffi = require "ffi"
        pcall(ffi.cdef, "int usleep(unsigned int);")
        return function(r) if r.i <= 3 then ffi.C.usleep(200000) end return { r.i, 2 * r.i } end
      ]])
      local want = doubled(1, 20000)
      for _, a in ipairs { "-j 1", "-j 2", "-j 3", "--chunk-size 1", "--chunk-size 7 -j 3", "--chunk-size 100000" } do
        local rc, out, err = fp(("map %s %s %s"):format(a, slow, input))
        assert.are.equal(0, rc, a .. ": " .. err)
        assert.are.equal(want, out, a)
      end
    end)

    it("-o FILE writes the file (and nothing on stdout); --unordered writes the same lines", function()
      local input = write("in.jsonl", records(1, 5000))
      local rc, out, err = fp(("map -o %s %s %s"):format(path("out.jsonl"), DOUBLE, input))
      assert.are.equal(0, rc, err)
      assert.are.equal("", out)
      assert.are.equal(doubled(1, 5000), read(path("out.jsonl")))
      rc, out = fp(("map --unordered --chunk-size 100 %s %s"):format(DOUBLE, input))
      assert.are.equal(0, rc)
      local got = lines(out)
      table.sort(got)
      local want = lines(doubled(1, 5000))
      table.sort(want)
      assert.are.same(want, got)
    end)

    it("a nil result drops the record; --flat writes each element of an array result", function()
      local even = write("even.lua", "return function(r) if r.i % 2 == 0 then return r.i end end\n")
      local input = write("in.jsonl", records(1, 10))
      local rc, out = fp("map " .. even .. " " .. input)
      assert.are.equal(0, rc)
      assert.are.equal("2\n4\n6\n8\n10\n", out)
      local rc2, out2 = fp("map --flat " .. DOUBLE .. " " .. input)
      assert.are.equal(0, rc2)
      local want = {}
      for k = 1, 10 do want[#want + 1] = k .. "\n" .. 2 * k .. "\n" end
      assert.are.equal(table.concat(want), out2)
    end)

    it("--raw passes lines as strings and writes results with tostring", function()
      local upper = write("upper.lua", "return function(l) return l:upper() .. ' ' .. #l end\n")
      local rc, out = fp("map --raw " .. upper .. " " .. write("raw.txt", "abc\nnot json at all\n\nlast"))
      assert.are.equal(0, rc)
      assert.are.equal("ABC 3\nNOT JSON AT ALL 15\n 0\nLAST 4\n", out)
    end)

    it("a table script: worker_init gets the --set table, map gets the state, worker_exit runs", function()
      local marks = path("exits")
      local script = write("table.lua", ([[
        return {
          worker_init = function(config) return { add = tonumber(config.add), tag = config.tag, n = 0 } end,
          map = function(state, r) state.n = state.n + 1; return { state.tag, r.i + state.add } end,
          worker_exit = function(state)
            local f = io.open(%q, "a"); f:write(state.n, "\n"); f:close()
          end,
        }
      ]]):format(marks))
      local input = write("in.jsonl", records(1, 3000))
      local rc, out, err = fp(("map -j 2 --chunk-size 100 --set add=1000 --set tag=x=y %s %s"):format(script, input))
      assert.are.equal(0, rc, err)
      local want = {}
      for k = 1, 3000 do want[#want + 1] = ('["x=y",%d]\n'):format(k + 1000) end
      assert.are.equal(table.concat(want), out)
      local total = 0
      for _, l in ipairs(lines(read(marks))) do total = total + tonumber(l) end
      assert.are.equal(3000, total)   -- every worker's worker_exit ran with its state
    end)

    it("an empty file, an empty stdin and a last line without newline are fine", function()
      local empty = write("empty.jsonl", "")
      local rc, out, err = fp("map " .. DOUBLE .. " " .. empty)
      assert.are.equal(0, rc, err)
      assert.are.equal("", out)
      rc, out = fp("map " .. DOUBLE)
      assert.are.equal(0, rc)
      assert.are.equal("", out)
      rc, out = fp("map " .. DOUBLE .. " " .. write("nonl.jsonl", '{"i":1}\n{"i":2}') .. " " .. empty .. " "
        .. write("one.jsonl", '{"i":3}'))
      assert.are.equal(0, rc)
      assert.are.equal(doubled(1, 3), out)
    end)

    it("--shard K/N: N shards are disjoint, their union is the whole run, each holds (n-1) % N == K-1", function()
      local a = write("a.jsonl", records(1, 700))
      local b = write("b.jsonl", records(701, 1000))
      local all = {}
      for k = 1, 3 do
        local rc, out, err = fp(("map --shard %d/3 %s %s %s"):format(k, NUMBER, a, b))
        assert.are.equal(0, rc, err)
        for _, l in ipairs(lines(out)) do
          local n = tonumber(l)
          assert.are.equal(k - 1, (n - 1) % 3)
          assert.is_nil(all[n], "line " .. n .. " in two shards")
          all[n] = true
        end
      end
      for n = 1, 1000 do assert.is_true(all[n], "line " .. n .. " in no shard") end
      local rc, out = fp(("map --shard 1/1 %s %s %s"):format(NUMBER, a, b))
      assert.are.equal(0, rc)
      assert.are.equal(1000, #lines(out))
      -- each shard's lines are byte for byte the lines of one whole run
      local rc1, whole, err1 = fp(("map %s %s %s"):format(MANY, a, b))
      assert.are.equal(0, rc1, err1)
      local wl = lines(whole)
      assert.are.equal(1000, #wl)
      for k = 1, 3 do
        local rck, outk, errk = fp(("map -j %d --shard %d/3 %s %s %s"):format(k, k, MANY, a, b))
        assert.are.equal(0, rck, errk)
        local want = {}
        for n = k, 1000, 3 do want[#want + 1] = wl[n] .. "\n" end
        assert.are.equal(table.concat(want), outk)
      end
    end)

    it("two separate processes write the same bytes for records with many keys", function()
      local input = write("many.jsonl", records(1, 3000))
      local rc1, out1, err1 = fp(("map -j 2 %s %s"):format(MANY, input))
      assert.are.equal(0, rc1, err1)
      local rc2, out2, err2 = fp(("map -j 3 --chunk-size 7 %s %s"):format(MANY, input))
      assert.are.equal(0, rc2, err2)
      assert.are.equal(3000, #lines(out1))
      assert.are.equal(out1, out2)
      -- and what this process (another hash seed again) writes for them
      local enc = require("forkpool.core").json_encode
      local fn = assert(loadstring(MANY_SRC))()
      local want = {}
      for i = 1, 3000 do want[i] = enc(fn({ i = i })) .. "\n" end
      assert.are.equal(table.concat(want), out1)
      -- the keys are in bytewise order, numbers exact
      assert.are.equal('{"2":"number key","big":1000000000000.5,"double":2,"frac":0.14285714285714285,' ..
        '"i":1,"k17":10,"k18":7,"k19":4,"k20":1,"k3":12,"k30":11,"k31":8,"k32":5,"k33":2,"k4":9,' ..
        '"k5":6,"k6":3,"name":"rec/1","neg":-1,"nested":{"x":{"a":1,"b":2,"c":3},"y":[1,"a/b"],"z":1},' ..
        '"ok":false}', lines(out1)[1])
    end)

    it("--progress draws forkpool's progress bar on stderr", function()
      local rc, out, err = fp("map --progress " .. NUMBER .. " " .. write("in.jsonl", records(1, 100)))
      assert.are.equal(0, rc)
      assert.are.equal(100, #lines(out))
      assert.matches("forkpool map: 100 done", err)
    end)

    it("a 100 MiB line is one block; the lines around it are kept", function()
      local big = path("big.jsonl")
      local f = assert(io.open(big, "wb"))
      f:write('{"i":1}\n{"i":2,"s":"')
      local chunk = string.rep("abcdefgh", 128 * 1024)   -- 1 MiB
      for _ = 1, 100 do f:write(chunk) end
      f:write('"}\n{"i":3}\n')
      f:close()
      local len = write("len.lua", "return function(r) return { r.i, r.s and #r.s or 0 } end\n")
      local rc, out, err = fp("map " .. len .. " " .. big)
      assert.are.equal(0, rc, err)
      assert.are.equal("[1,0]\n[2,104857600]\n[3,0]\n", out)
      os.remove(big)
    end)
  end)

  describe("bad records", function()
    -- Input with one bad line of each kind among good ones.
    local function bad_input()
      return write("bad.jsonl", table.concat {
        '{"i":1}\n',
        'this is not json\n',               -- line 2: json
        '{"i":3}\n',
        '{"i":"boom"}\n',                   -- line 4: the script raises
        '{"i":5}\n',
        '{"i":6,"s":"\xff\xfe"}\n',         -- line 6: invalid UTF-8
        '\n',                               -- line 7: empty, skipped
        '{"i":8}\n',
        '{"i":9',                           -- line 9: truncated last line
      })
    end
    local SCRIPT_SRC = "return function(r) if r.i == 'boom' then error('boom!') end return { r.i } end\n"

    it("--errors fail (default): stops at the first, keeps the lines before it, FILE:LINE on stderr, exit 1",
      function()
      local script = write("boom.lua", SCRIPT_SRC)
      local input = bad_input()
      local rc, out, err = fp("map " .. script .. " " .. input)
      assert.are.equal(1, rc)
      assert.are.equal("[1]\n", out)
      assert.matches("^" .. input:gsub("%p", "%%%0") .. ":2: [^\n]+\n$", err)
      -- from stdin the file is "-"
      rc, out, err = fp("map " .. script, "tail -n +3 " .. input)
      assert.are.equal(1, rc)
      assert.are.equal("[3]\n", out)
      assert.matches("^%-:2: [^\n]*boom!", err)
      -- each kind on its own
      for _, c in ipairs {
        { "not json\n", "-:1: ", "" },
        { '{"i":1}\n{"i":2,"s":"\xc3"}\n', "-:2: ", "[1]\n" },
        { '{"i":1}\n{"i":2}\n{"i":', "-:3: ", "[1]\n[2]\n" },
      } do
        local rc2, out2, err2 = sh(("printf '%%s' %s | %s map %s"):format(q(c[1]), BIN, script))
        assert.are.equal(1, rc2, err2)
        assert.are.equal(c[2], err2:sub(1, #c[2]), err2)
        assert.are.equal(c[3], out2)
      end
    end)

    it("--errors skip: each bad record on stderr as FILE:LINE, every good one written, a count, exit 0", function()
      local script = write("boom.lua", SCRIPT_SRC)
      local input = bad_input()
      local rc, out, err = fp("map --errors skip " .. script .. " " .. input)
      assert.are.equal(0, rc, err)
      assert.are.equal("[1]\n[3]\n[5]\n[8]\n", out)
      local e = lines(err)
      assert.are.equal(5, #e, err)
      for i, ln in ipairs { 2, 4, 6, 9 } do
        assert.are.equal(input .. ":" .. ln .. ": ", e[i]:sub(1, #input + #tostring(ln) + 3), err)
      end
      assert.matches("boom!", e[2])
      assert.are.equal("forkpool map: 4 records failed", e[5])
    end)

    it("--error-log FILE: bad records as JSON lines {file, line, kind, message}", function()
      local script = write("boom.lua", SCRIPT_SRC)
      local input = bad_input()
      local log = path("errors.jsonl")
      local rc, out, err = fp(("map --errors skip --error-log %s %s %s"):format(log, script, input))
      assert.are.equal(0, rc, err)
      assert.are.equal("[1]\n[3]\n[5]\n[8]\n", out)
      assert.are.equal("forkpool map: 4 records failed (see " .. log .. ")\n", err)
      local got = {}
      for _, l in ipairs(lines(read(log))) do
        assert.matches('^{"file":.*,"line":%d+,"kind":"%w+","message":.*}$', l)   -- keys in this order
        got[#got + 1] = cjson.decode(l)
      end
      assert.are.equal(4, #got)
      local kinds = { "json", "task", "utf8", "json" }
      for i, ln in ipairs { 2, 4, 6, 9 } do
        assert.are.equal(input, got[i].file)
        assert.are.equal(ln, got[i].line)
        assert.are.equal(kinds[i], got[i].kind)
        assert.are.equal("string", type(got[i].message))
      end
    end)

    it("--task-timeout: a block that runs too long fails the run naming its place, exit 1", function()
      local hang = write("hang.lua", [[
        local ffi = require "ffi"
        pcall(ffi.cdef, "unsigned int sleep(unsigned int);")
        return function(r) if r.i == 50 then ffi.C.sleep(60) end return r.i end
      ]])
      local input = write("in.jsonl", records(1, 100))
      local t0 = util.monotonic()
      local rc, _, err = fp(("map --task-timeout 0.5 --chunk-size 10 %s %s"):format(hang, input))
      assert.are.equal(1, rc)
      assert.is_true(util.monotonic() - t0 < 30)
      assert.matches(input:gsub("%p", "%%%0") .. ":41: .*timeout", err)
    end)

    it("--max-retries: a block whose worker died runs again", function()
      local mark = path("died-once")
      local die = write("die.lua", ([[
        local ffi = require "ffi"
        pcall(ffi.cdef, "int kill(int, int); int getpid(void);")
        return function(r)
          if r.i == 30 and not io.open(%q) then
            io.open(%q, "w"):close()
            ffi.C.kill(ffi.C.getpid(), 9)
          end
          return r.i
        end
      ]]):format(mark, mark))
      local input = write("in.jsonl", records(1, 100))
      local rc, out, err = fp(("map --max-retries 1 --chunk-size 10 %s %s"):format(die, input))
      assert.are.equal(0, rc, err)
      assert.are.equal(100, #lines(out))
      os.remove(mark)
      rc, out, err = fp(("map --chunk-size 10 %s %s"):format(die, input))
      assert.are.equal(1, rc)
      assert.matches("worker died", err)
      -- some of the blocks before the one that died: the run stops when the
      -- death is seen, even if later blocks were done
      local n = #lines(out)
      assert.is_true(n <= 20 and n % 10 == 0, out)
      local want = {}
      for k = 1, n do want[k] = k .. "\n" end
      assert.are.equal(table.concat(want), out)
      os.remove(mark)
    end)
  end)

  describe("closed output, Ctrl-C, --resume", function()
    local input
    setup(function()
      local t = {}
      for k = 1, 200000 do t[k] = ('{"i":%d}\n'):format(k) end
      input = write("large.jsonl", table.concat(t))
    end)

    it("| head -n 3 ends the run quietly, exit 0", function()
      local rcfile = path("rc")
      local rc, out, err = sh(("(%s map %s %s; echo $? >%s) | head -n 3"):format(BIN, DOUBLE, input, rcfile))
      assert.are.equal(0, rc)
      assert.are.equal(doubled(1, 3), out)
      assert.are.equal("", err)
      assert.are.equal("0\n", read(rcfile))
    end)

    -- Start forkpool in its own process group (as a terminal's foreground
    -- job is) with output to a file; returns its pid.
    local function start(args)
      local p = io.popen(("setsid %s %s >%s 2>%s </dev/null & echo $!")
        :format(BIN, args, path("bg.out"), path("bg.err")))
      local pid = tonumber(p:read("*l"))
      p:close()
      return pid
    end

    local function wait_exit(pid, timeout)
      return util.wait_for(function() return not util.pid_alive(pid) end, timeout or 20)
    end

    it("Ctrl-C (SIGINT to the process group) stops the workers, exit 130, only whole lines written", function()
      local slow = write("slow.lua", [[
        local ffi = require "ffi"
        pcall(ffi.cdef, "int usleep(unsigned int);")
        return function(r) ffi.C.usleep(100); return { r.i, 2 * r.i } end
      ]])
      for _, delay in ipairs { 0, 0.2, 0.5 } do
        -- the status comes through a wrapper shell that waits for it
        local rcfile = path("int.rc")
        os.remove(rcfile)
        os.remove(path("int.out"))
        local p = io.popen(("setsid sh -c '%s map --chunk-size 50 %s %s -o %s 2>%s; echo $? >%s' </dev/null "
          .. ">/dev/null 2>&1 & echo $!"):format(BIN, slow, input, path("int.out"), path("int.err"), rcfile))
        local pid = tonumber(p:read("*l"))
        p:close()
        -- once it writes (a loaded machine may take a while to start it)
        assert.is_true(util.wait_for(function()
          local f = io.open(path("int.out"), "rb")
          local size = f and f:seek("end") or 0
          if f then f:close() end
          return size > 0
        end, 30))
        util.sleep(delay)
        util.kill(-pid, 2)
        local done = util.wait_for(function() return read(rcfile) ~= nil and read(rcfile):find("\n") end, 20)
        if not done then util.kill(-pid, 9) end
        assert.truthy(done, "forkpool did not stop after SIGINT")
        assert.are.equal("130\n", read(rcfile))
        assert.are.equal("forkpool map: interrupted\n", read(path("int.err")))
        local out = read(path("int.out"))
        assert.is_true(#out > 0 and out:sub(-1) == "\n", "not whole lines")
        local got = lines(out)
        assert.is_true(#got < 200000)
        assert.are.equal(doubled(1, #got), out)
        assert.is_true(wait_exit(pid))
      end
    end)

    it("--resume after SIGKILLs at random points gives the file an uninterrupted run writes", function()
      -- (results are objects with many keys: the resumed file must still be
      -- byte for byte the uninterrupted run's)
      local skip = write("skip.lua", "local many = (function() " .. MANY_SRC .. " end)()\n" .. [[
        return function(r) if r.i % 997 == 0 then error("bad " .. r.i) end return many(r) end
      ]])
      local args = ("map --errors skip --chunk-size 500 %s %s"):format(skip, input)
      local rc, _, err = fp(args .. " -o " .. path("clean.jsonl") .. " --error-log " .. path("clean.err"))
      assert.are.equal(0, rc, err)
      local clean = read(path("clean.jsonl"))
      assert.are.equal(200000 - 200, #lines(clean))
      local out, elog = path("resumed.jsonl"), path("resumed.err")
      local cmd = args .. " --resume -o " .. out .. " --error-log " .. elog
      math.randomseed(os.time())
      local kills = 0
      for _ = 1, 6 do
        local pid = start(cmd)
        util.sleep(0.1 + math.random() * 0.5)
        if util.pid_alive(pid) then
          util.kill(pid, 9)
          kills = kills + 1
        end
        assert.is_true(wait_exit(pid))
      end
      rc, _, err = fp(cmd)
      assert.are.equal(0, rc, err)
      assert.is_true(kills >= 1)
      assert.are.equal(clean, read(out))
      assert.are.equal(read(path("clean.err")), read(elog))
      assert.are.equal("forkpool map: 200 records failed (see " .. elog .. ")\n", err)
      assert.is_nil(read(out .. ".forkpool-resume"), "the journal is removed at the end")
    end)

    it("--resume refuses a journal another command wrote, and an output shorter than the journal", function()
      local out = path("r.jsonl")
      local pid = start(("map --chunk-size 500 %s %s --resume -o %s"):format(DOUBLE, input, out))
      assert.is_true(util.wait_for(function() return read(out .. ".forkpool-resume") ~= nil end, 20))
      util.kill(pid, 9)
      assert.is_true(wait_exit(pid))
      local rc, _, err = fp(("map --chunk-size 500 %s %s --resume -o %s"):format(NUMBER, input, out))
      assert.are.equal(2, rc)
      assert.matches("written by a different command", err)
      assert(io.open(out, "wb")):close()
      rc, _, err = fp(("map --chunk-size 500 %s %s --resume -o %s"):format(DOUBLE, input, out))
      assert.are.equal(2, rc)
      assert.matches("its resume journal says", err)
      os.remove(out .. ".forkpool-resume")
      rc = fp(("map %s %s --resume -o %s"):format(DOUBLE, input, out))
      assert.are.equal(0, rc)
      assert.are.equal(doubled(1, 200000), read(out))
    end)
  end)
end)
