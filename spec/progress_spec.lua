-- forkpool.progress: the tqdm-style bar, driven by a fake clock and a fake
-- stream (a table recording what is written); one test writes through a
-- real pipe to check terminal detection.  No timing thresholds.
local progress = require "forkpool.progress"

-- A fake stream: records every write, counts flushes.
local function recorder()
  local s = { writes = {}, flushes = 0 }
  function s:write(x) self.writes[#self.writes + 1] = x return self end
  function s:flush() self.flushes = self.flushes + 1 return self end
  function s:text() return table.concat(self.writes) end
  return s
end

-- A fake clock: clock.t is the time now() returns.
local function fake_clock(t)
  local c = { t = t or 1000 }
  c.now = function() return c.t end
  return c
end

local function count(s, pat)
  return select(2, s:gsub(pat, ""))
end

local function utf8_len(s)
  return count(s, "[^\128-\191]")
end

describe("forkpool.progress", function()
  local clock, out
  before_each(function()
    clock = fake_clock(1000)
    out = recorder()
  end)

  local function bar(opts)
    opts.stream = opts.stream or out
    opts.now = opts.now or clock.now
    return progress.new(opts)
  end

  describe("on a terminal", function()
    it("draws 0% at once, then redraws in place: percent, bar, counts, times, rate", function()
      local b = bar{ total = 1000, desc = "desc", tty = true, width = 80 }
      assert.are.same({
        "\rdesc:   0%|                                           | 0/1000 [00:00<?, ?it/s]\27[K",
      }, out.writes)
      clock.t = 1002.5
      b:update(450)
      assert.are.equal(
        "\rdesc:  45%|██████████████▍                 | 450/1000 [00:02<00:03, 180.00it/s]\27[K",
        out.writes[2])
      clock.t = 1005
      b:update(1000)
      assert.are.equal(
        "\rdesc: 100%|███████████████████████████████| 1000/1000 [00:05<00:00, 200.00it/s]\27[K",
        out.writes[3])
      b:close()
      assert.are.equal(
        "\rdesc: 100%|███████████████████████████████| 1000/1000 [00:05<00:00, 200.00it/s]\27[K\n",
        out.writes[4])
      assert.are.equal(4, #out.writes)
      assert.are.equal(4, out.flushes) -- one write and one flush per draw
    end)

    it("fills the width less one column, with partial blocks for eighths of a cell", function()
      local b = bar{ total = 80, tty = true, width = 60 }
      for _, n in ipairs{ 1, 7, 13, 40, 79 } do
        clock.t = clock.t + 1
        b:update(n)
        local line = out.writes[#out.writes]:match("^\r(.*)\27%[K$")
        assert.are.equal(59, utf8_len(line))
        local cells = line:match("|(.-)|")
        local n_cells = utf8_len(cells)
        -- full blocks plus the partial one stand for floor(n/80 * cells * 8)
        -- eighths; spaces fill the rest
        local eighths = math.floor(n / 80 * n_cells * 8)
        local full, part = math.floor(eighths / 8), eighths % 8
        local parts = { "▏", "▎", "▍", "▌", "▋", "▊", "▉" }
        local want = ("█"):rep(full) .. (parts[part] or "")
        assert.are.equal(want .. (" "):rep(n_cells - utf8_len(want)), cells)
      end
      b:close()
    end)

    it("shows counts, elapsed time and rate without a bar when the total is unknown", function()
      local b = bar{ desc = "desc", tty = true }
      assert.are.equal("\rdesc: 0it [00:00, ?it/s]\27[K", out.writes[1])
      clock.t = 1002.5
      b:update(450)
      assert.are.equal("\rdesc: 450it [00:02, 180.00it/s]\27[K", out.writes[2])
      b:close()
      assert.are.equal("\rdesc: 450it [00:02, 180.00it/s]\27[K\n", out.writes[3])
    end)

    it("switches to the bar once set_total tells the total", function()
      local b = bar{ tty = true, width = 80 }
      clock.t = 1001
      b:update(30)
      assert.are.equal("\r30it [00:01, 30.00it/s]\27[K", out.writes[2])
      b:set_total(60)
      clock.t = 1002
      b:update(60)
      local cells = out.writes[3]:match("^\r100%%|(.-)| 60/60 %[00:02<00:00, 30%.00it/s%]\27%[K$")
      assert.are.equal(("█"):rep(utf8_len(cells)), cells)
      b:set_total(nil)
      clock.t = 1003
      b:update(60)
      assert.are.equal("\r60it [00:03, 20.00it/s]\27[K", out.writes[4])
      b:close()
    end)

    it("formats hours as h:mm:ss, an unknown remaining time as ?, slow rates as s/it", function()
      local b = bar{ total = 10, tty = true, width = 100 }
      clock.t = 1000 + 3 * 3600 + 25 * 60 + 7
      b:update(0)
      assert.matches("| 0/10 %[3:25:07<%?, %?it/s%]", out.writes[2])
      clock.t = clock.t + 1
      b:update(4)
      -- 4 items in 12308 s: 3077 s/it, 6 left -> 18462 s = 5:07:42
      assert.matches("| 4/10 %[3:25:08<5:07:42, 3077%.00s/it%]", out.writes[3])
      b:close()
    end)

    it("cuts the line to the width when there is no room for a bar", function()
      local b = bar{ total = 1000, desc = "a rather long description", tty = true, width = 40 }
      clock.t = 1002.5
      b:update(450)
      local line = out.writes[2]:match("^\r(.*)\27%[K$")
      assert.are.equal(39, utf8_len(line))
      local full = "a rather long description:  45% 450/1000 [00:02<00:03, 180.00it/s]"
      assert.are.equal(full:sub(1, 39), line)
      b:close()
    end)

    it("counts a multibyte description by code points", function()
      local b = bar{ total = 4, desc = "größe", tty = true, width = 50 }
      assert.are.equal(49, utf8_len(out.writes[1]:match("^\r(.*)\27%[K$")))
      b:close()
    end)
  end)

  describe("on a non-terminal", function()
    it("writes nothing at first, then a line every 5 s by default, and a final line", function()
      local b = bar{ total = 1000, desc = "desc", tty = false }
      assert.are.same({}, out.writes)
      clock.t = 1004.9
      b:update(400)
      assert.are.same({}, out.writes)
      clock.t = 1005
      b:update(450)
      assert.are.same({ "desc: 450/1000 (45%) 00:05 elapsed, 00:06 left, 90.0 it/s\n" }, out.writes)
      clock.t = 1009.9
      b:update(800)
      assert.are.equal(1, #out.writes)
      clock.t = 1010
      b:update(900)
      assert.are.equal("desc: 900/1000 (90%) 00:10 elapsed, 00:01 left, 90.0 it/s\n", out.writes[2])
      clock.t = 1011
      b:update(1000)
      b:close()
      assert.are.same({
        "desc: 450/1000 (45%) 00:05 elapsed, 00:06 left, 90.0 it/s\n",
        "desc: 900/1000 (90%) 00:10 elapsed, 00:01 left, 90.0 it/s\n",
        "desc: 1000/1000 (100%) 00:11 elapsed, 00:00 left, 90.9 it/s\n",
      }, out.writes)
      assert.are.equal(3, out.flushes)
    end)

    it("writes the final line even for a run shorter than the interval", function()
      local b = bar{ total = 3, tty = false }
      clock.t = 1000.5
      b:update(3)
      assert.are.same({}, out.writes)
      b:close()
      assert.are.same({ "3/3 (100%) 00:00 elapsed, 00:00 left, 6.0 it/s\n" }, out.writes)
    end)

    it("does not repeat a line at close that an update has just written", function()
      local b = bar{ total = 10, tty = false, min_interval = 1 }
      clock.t = 1001
      b:update(10)
      b:close()
      assert.are.same({ "10/10 (100%) 00:01 elapsed, 00:00 left, 10.0 it/s\n" }, out.writes)
    end)

    it("shows counts and rate without a total, and ? before anything is done", function()
      local b = bar{ desc = "lines", tty = false, min_interval = 2 }
      clock.t = 1002
      b:update(0)
      clock.t = 1004
      b:update(6)
      b:close()
      assert.are.same({
        "lines: 0 done, 00:02 elapsed, ? it/s\n",
        "lines: 6 done, 00:04 elapsed, 1.5 it/s\n",
      }, out.writes)
      local b2 = bar{ total = 2, tty = false }
      clock.t = 1010
      b2:update(1)
      b2:close()
      assert.are.equal("1/2 (50%) 00:06 elapsed, 00:06 left, 6.0 s/it\n", out.writes[3])
    end)
  end)

  describe("redraw timing", function()
    it("respects min_interval: no draw before it has passed since the last draw", function()
      local b = bar{ total = 100, tty = true, min_interval = 0.5 }
      assert.are.equal(1, #out.writes)
      for i = 1, 49 do
        clock.t = 1000 + i * 0.01
        b:update(i)
      end
      assert.are.equal(1, #out.writes)
      clock.t = 1000.5
      b:update(50)
      assert.are.equal(2, #out.writes)
      clock.t = 1000.99
      b:update(60)
      assert.are.equal(2, #out.writes)
      clock.t = 1001
      b:update(70)
      assert.are.equal(3, #out.writes)
      b:close()
    end)

    it("defaults to 0.1 s on a terminal", function()
      local b = bar{ total = 100, tty = true }
      clock.t = 1000.09
      b:update(1)
      assert.are.equal(1, #out.writes)
      clock.t = 1000.1
      b:update(2)
      assert.are.equal(2, #out.writes)
      b:close()
    end)

    it("next_wakeup: seconds to the next redraw, 0 when due, math.huge when closed", function()
      local b = bar{ total = 100, tty = true, min_interval = 0.5 }
      assert.are.equal(0.5, b:next_wakeup())
      clock.t = 1000.25
      assert.are.equal(0.25, b:next_wakeup())
      clock.t = 1000.75
      assert.are.equal(0, b:next_wakeup())
      b:update(10) -- draws at 1000.75
      assert.are.equal(2, #out.writes)
      assert.are.equal(0.5, b:next_wakeup())
      local p = bar{ total = 100, tty = false }
      assert.are.equal(5, p:next_wakeup())
      b:close()
      p:close()
      assert.are.equal(math.huge, b:next_wakeup())
      assert.are.equal(math.huge, p:next_wakeup())
    end)

    it("after a burst of fast calls, the first update after next_wakeup redraws on time", function()
      local b = bar{ total = 1e6, tty = true, min_interval = 0.1 }
      for i = 1, 10000 do b:update(i) end -- no time passes: the stride grows
      assert.are.equal(1, #out.writes)
      clock.t = clock.t + b:next_wakeup()
      b:update(10001)
      assert.are.equal(2, #out.writes)
      assert.matches("10001/1000000", out.writes[2])
      b:close()
    end)

    it("at a steady call rate, redraws come at most 1/16 of the interval late", function()
      -- 1e5 calls per second for 3 s: the stride grows, yet every redraw
      -- is close to its due time.
      local draws = {}
      local stream = {
        write = function() draws[#draws + 1] = clock.t end,
        flush = function() end,
      }
      local b = bar{ total = 3e5, tty = true, min_interval = 0.1, stream = stream }
      for i = 1, 3e5 do
        clock.t = 1000 + i * 1e-5
        b:update(i)
      end
      assert.is_true(#draws >= 28 and #draws <= 31)
      for k = 2, #draws do
        local gap = draws[k] - draws[k - 1]
        assert.is_true(gap >= 0.1 - 1e-9 and gap <= 0.1 + 0.1 / 16, "gap " .. gap)
      end
      b:close()
    end)

    it("update records the count even between clock reads, so close shows the latest", function()
      local b = bar{ total = 1e6, tty = false, min_interval = 1 }
      for i = 1, 1000 do b:update(i) end
      b:close()
      assert.are.same({ "1000/1000000 (0%) 00:00 elapsed, ? left, ? it/s\n" }, out.writes)
    end)
  end)

  describe("close", function()
    it("is idempotent", function()
      local b = bar{ total = 1, tty = true }
      clock.t = 1001
      b:update(1)
      b:close()
      local n = #out.writes
      b:close()
      b:close()
      assert.are.equal(n, #out.writes)
      assert.matches("\n$", out.writes[n])
    end)

    it("makes update and set_total raise", function()
      local b = bar{ total = 1, tty = false }
      b:close()
      assert.has_error(function() b:update(1) end,
        "attempt to use a closed progress bar (in 'update')")
      assert.has_error(function() b:set_total(2) end,
        "attempt to use a closed progress bar (in 'set_total')")
    end)
  end)

  describe("arguments", function()
    it("check_options accepts the documented keys and nil", function()
      assert.is_nil(progress.check_options(nil, "map"))
      local t = { desc = "x", stream = io.stderr, min_interval = 0.5, width = 100 }
      assert.are.equal(t, progress.check_options(t, "map"))
    end)

    it("check_options raises with the option's full name", function()
      local function check(t) return function() progress.check_options(t, "map") end end
      assert.has_error(check{ desc = 1 },
        "bad option 'progress_bar_options.desc' to 'map' (string expected, got number)")
      assert.has_error(check{ stream = "stderr" },
        "bad option 'progress_bar_options.stream' to 'map' (file handle expected, got string)")
      assert.has_error(check{ stream = { write = print, flush = print } },
        "bad option 'progress_bar_options.stream' to 'map' (file handle expected, got table)")
      local f = io.tmpfile()
      f:close()
      assert.has_error(check{ stream = f },
        "bad option 'progress_bar_options.stream' to 'map' (file handle expected, got closed file)")
      assert.has_error(check{ min_interval = "1" }, "bad option "
        .. "'progress_bar_options.min_interval' to 'map' (positive number expected, got string)")
      assert.has_error(check{ min_interval = 0 },
        "bad option 'progress_bar_options.min_interval' to 'map' (positive number expected, got 0)")
      assert.has_error(check{ width = 1.5 },
        "bad option 'progress_bar_options.width' to 'map' (positive integer expected, got 1.5)")
      assert.has_error(check{ width = true },
        "bad option 'progress_bar_options.width' to 'map' (positive integer expected, got boolean)")
      assert.has_error(check{ total = 10 },
        "bad option 'progress_bar_options.total' to 'map' (unknown option)")
      assert.has_error(check{ tty = true },
        "bad option 'progress_bar_options.tty' to 'map' (unknown option)")
      assert.has_error(check(5),
        "bad option 'progress_bar_options' to 'map' (table expected, got number)")
    end)

    it("check_options points the error at the level it is given", function()
      local function map(opts) progress.check_options(opts, "map", 2) end
      local ok, err = pcall(function()
        map({ bogus = 1 }) -- this line
      end)
      assert.is_false(ok)
      local line = debug.getinfo(1, "l").currentline - 3
      assert.matches("progress_spec.lua:" .. line .. ": bad option", err, 1, true)
    end)

    it("new rejects unknown and wrong options, update and set_total wrong values", function()
      assert.has_error(function() progress.new{ colour = "red" } end,
        "bad option 'colour' to 'progress.new' (unknown option)")
      assert.has_error(function() progress.new{ total = -1 } end,
        "bad option 'total' to 'progress.new' (non-negative number expected, got -1)")
      assert.has_error(function() progress.new{ stream = {} } end,
        "bad option 'stream' to 'progress.new' (stream expected, got table)")
      assert.has_error(function() progress.new{ tty = 1 } end,
        "bad option 'tty' to 'progress.new' (boolean expected, got number)")
      assert.has_error(function() progress.new(3) end,
        "bad argument #1 to 'progress.new' (table expected, got number)")
      local b = bar{ tty = false }
      assert.has_error(function() b:update("1") end,
        "bad argument #1 to 'update' (number expected, got string)")
      assert.has_error(function() b:set_total(-2) end,
        "bad argument #1 to 'set_total' (non-negative number expected, got -2)")
      b:close()
    end)

    it("takes the width from $COLUMNS when not given", function()
      local cols = tonumber(os.getenv("COLUMNS"))
      local want = (cols and cols >= 1 and cols == math.floor(cols)) and cols or 80
      local b = bar{ total = 10, tty = true }
      assert.are.equal(want - 1, utf8_len(out.writes[1]:match("^\r(.*)\27%[K$")))
      b:close()
    end)
  end)

  describe("with a real stream", function()
    it("detects a pipe as not a terminal and writes plain lines through it", function()
      local path = os.tmpname()
      local pipe = assert(io.popen("cat > " .. path, "w"))
      local b = progress.new{ total = 20, desc = "piped", stream = pipe, now = clock.now }
      clock.t = 1004
      b:update(10)          -- before the default 5 s: nothing
      clock.t = 1008
      b:update(20)          -- due: a plain line
      b:close()             -- same state: not repeated
      clock.t = 1009
      local b2 = progress.new{ stream = pipe, now = clock.now }
      b2:close()
      pipe:close()
      local f = assert(io.open(path))
      local text = f:read("*a")
      f:close()
      os.remove(path)
      assert.are.equal(
        "piped: 20/20 (100%) 00:08 elapsed, 00:00 left, 2.5 it/s\n" ..
        "0 done, 00:00 elapsed, ? it/s\n", text)
    end)

    it("works with the default clock and stream", function()
      local b = progress.new{ total = 2, tty = false, stream = out }
      b:update(2)
      b:close()
      assert.matches("^2/2 %(100%%%) 00:00 elapsed, ", out.writes[1])
      local d = progress.new{ tty = false, min_interval = 100 } -- io.stderr, writes nothing yet
      assert.is_true(d:next_wakeup() > 99)
    end)
  end)
end)
