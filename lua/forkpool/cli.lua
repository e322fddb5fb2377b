-- forkpool.cli: `forkpool map SCRIPT.lua [FILE ...]`, the parent side.
--
--   require("forkpool.cli").main(argv) -> exit status
--     0 done (also --errors skip with bad records), 1 a record failed
--     (--errors fail) or the run failed, 2 usage error, 130 interrupted.
--
-- The steps of one run, each in its own module:
--   forkpool.cli_args     the command line (options, help)
--   forkpool.cli_input    the inputs cut into blocks of whole lines
--   forkpool.jsonl        the worker side: a block of lines in, a block of
--                         output lines out (run_block), the script loaded
--                         in each worker (init, exit)
--   forkpool.cli_output   the output and the reports of bad records
--   forkpool.cli_resume   the --resume journal
--   forkpool.cli_signals  SIGPIPE ignored; forkpool's SIGINT guard armed for the run
--
-- The parent checks everything it can before any input is read (options,
-- the script loads and returns a function or a table with map, the inputs
-- open, the output opens), then runs pool:imap (imap_unordered with
-- --unordered) over the blocks with use_worker_state: the item is a block
-- { file, line, n, text, count }, the task jsonl.run_block(state, block),
-- one block per chunk.  Each block's result { out, n_in, n_out, errors,
-- fail } is written with one write, then the journal is updated (--resume).
-- A SIGINT anywhere in the run makes the next pool call raise
-- "interrupted": the workers are killed, the output holds whole blocks.

local args = require "forkpool.cli_args"
local input = require "forkpool.cli_input"
local output = require "forkpool.cli_output"
local resume = require "forkpool.cli_resume"
local signals = require "forkpool.cli_signals"

local M = {}

local say = output.say

-- A run's end: its exit status and what to say on stderr.
local function usage_error(msg)
  say("forkpool: " .. msg .. " (see 'forkpool map --help')\n")
  return 2
end

local function fail(msg, status)
  say("forkpool map: " .. msg .. "\n")
  return status or 1
end

-- Load the script in the parent once, so that a script that does not load
-- or does not return what it must is reported before any input is read
-- (forkpool.jsonl's load, which the workers use too, by path).
local function check_script(path)
  local f = io.open(path, "r")
  if not f then return nil, "cannot open the script " .. path end
  f:close()
  local loaded, err = require("forkpool.jsonl").load(path)
  if not loaded then return nil, "cannot use the script: " .. tostring(err) end
  return true
end

-- The configuration jsonl.init receives in each worker.
local function worker_config(cmd)
  return {
    script = cmd.script,
    raw = cmd.raw,
    flat = cmd.flat,
    errors = cmd.errors,
    shard = cmd.shard and { cmd.shard.k, cmd.shard.n, k = cmd.shard.k, n = cmd.shard.n } or nil,
    set = cmd.set,
  }
end

-- "FILE:LINE: " of the block a pool error names (its item index), or "".
local function where(blocks, err)
  local b = type(err) == "table" and err.index and blocks[err.index]
  if not b then return "" end
  return ("%s:%d: (the block of lines %d-%d) "):format(b.file, b.line, b.line, b.line + b.count - 1)
end

-- The run itself; everything checked.  ctx: cmd, out, log, journal,
-- identity.  Returns the exit status.
local function run(ctx)
  local cmd, out, log = ctx.cmd, ctx.out, ctx.log
  local forkpool = require "forkpool"
  local jsonl = require "forkpool.jsonl"
  local run_block, init, exit = jsonl.run_block, jsonl.init, jsonl.exit
  local config = worker_config(cmd)
  local journal = ctx.journal
  local lines_done = journal and journal.lines or 0

  -- The blocks in flight by item index (imap's), for the journal and for
  -- naming the block a pool error is about.
  local blocks, nblocks = {}, 0
  local next_block = input.blocks(cmd.files, { chunk_size = cmd.chunk_size, skip = lines_done })
  local function source()
    local b = next_block()
    if b == nil then return nil end
    nblocks = nblocks + 1
    blocks[nblocks] = { file = b.file, line = b.line, n = b.n, count = b.count }
    b.count = nil
    return b
  end

  local pool = forkpool.new{ n_jobs = cmd.jobs, use_worker_state = true }
  local bar = cmd.progress and require("forkpool.progress").new{ desc = "forkpool map" }

  -- End with status s, saying msg; the workers are killed once the guard
  -- is off (terminating the pool releases what the guard points at).
  local kill = false
  local function stop(s, msg)
    if bar then bar:close() end
    kill = true
    if msg then say("forkpool map: " .. msg .. "\n") end
    return s
  end

  -- A pool call failed with err: the status and message.
  local function failed(err)
    if forkpool.is_error(err, "interrupted") then return stop(130, "interrupted") end
    if type(err) == "table" and err.input then return stop(2, err.input) end
    return stop(1, where(blocks, err) .. tostring(err))
  end

  -- One block's result, written: nil to go on, or the exit status.
  local function deliver(res, idx)
    local b = blocks[idx]
    blocks[idx] = nil
    local w, err = out:write(res.out)
    if w == "closed" then return stop(0) end
    if not w then return stop(1, "cannot write the output: " .. tostring(err)) end
    if res.errors then
      for _, e in ipairs(res.errors) do
        local rok, rerr = log:report(e)
        if not rok then return stop(1, "cannot write the error log: " .. tostring(rerr)) end
      end
    end
    if res.fail then
      local e = res.fail
      if bar then bar:close() end
      say(("%s:%s: %s\n"):format(e.file, e.line, tostring(e.message)))
      return stop(1)
    end
    lines_done = cmd.unordered and lines_done + b.count or b.n + b.count - 1
    if journal then
      journal.lines, journal.bytes = lines_done, out.bytes
      journal.errors, journal.error_log_bytes = log.count, log.bytes
      local jok, jerr = resume.write(cmd.output, ctx.identity, journal)
      if not jok then return stop(1, "cannot write the resume journal: " .. tostring(jerr)) end
    end
    if bar then bar:update(lines_done) end
    return nil
  end

  -- Map the blocks, write the results; returns the exit status, or nil
  -- when every block was written.
  local function drive()
    local imap = cmd.unordered and pool.imap_unordered or pool.imap
    local ok, it = pcall(imap, pool, function(state, block) return run_block(state.w, block) end, source, {
      chunk_size = 1,
      worker_init = function(state) state.w = init(config) end,
      worker_exit = function(state) exit(state.w) end,
      max_retries = cmd.max_retries,
      task_timeout = cmd.task_timeout,
    })
    if not ok then return failed(it) end
    while true do
      local got, res, idx = pcall(it)
      if not got then return failed(res) end
      if res == nil then break end
      local status = deliver(res, idx)
      if status then return status end
    end
    return nil
  end

  local status = signals.with_sigint_guard(pool, drive)
  if kill then pcall(pool.terminate, pool) end
  if status then return status end

  if bar then bar:close() end
  local cok, cerr = pcall(pool.close, pool)
  if not cok then
    pcall(pool.terminate, pool)
    if forkpool.is_error(cerr, "interrupted") then return fail("interrupted", 130) end
    return fail(tostring(cerr))
  end
  cok, cerr = out:close()
  if not cok then return fail("cannot write the output: " .. tostring(cerr)) end
  if journal then resume.remove(cmd.output) end
  if log.count > 0 then
    say(("forkpool map: %d record%s failed%s\n"):format(log.count, log.count == 1 and "" or "s",
      cmd.error_log and (" (see " .. cmd.error_log .. ")") or ""))
  end
  return 0
end

-- The file path names once symlinks and ".." are resolved, or nil when
-- it does not exist.
local function realpath(p)
  local ffi = require "ffi"
  pcall(ffi.cdef, [[
    char *forkpool_cli_realpath(const char *path, char *resolved) __asm__("realpath");
    void forkpool_cli_free(void *p) __asm__("free");
  ]])
  local r = ffi.C.forkpool_cli_realpath(p, nil)
  if r == nil then return nil end
  local s = ffi.string(r)
  ffi.C.forkpool_cli_free(r)
  return s
end

-- Check and open everything, then run.
local function map(cmd)
  local ok, err = check_script(cmd.script)
  if not ok then return fail(err, 2) end
  err = input.check_readable(cmd.files)
  if err then return usage_error("cannot read the input: " .. err) end
  -- -o truncates its file: never one of the inputs
  local out_real = cmd.output and realpath(cmd.output)
  if out_real then
    for _, f in ipairs(cmd.files) do
      if f ~= "-" and realpath(f) == out_real then
        return usage_error(("the output %s is also an input"):format(cmd.output))
      end
    end
  end

  local ctx = { cmd = cmd }
  if cmd.resume then
    ctx.identity = resume.identity(cmd)
    local jok, j = pcall(resume.read, cmd.output, ctx.identity)
    if not jok then
      if type(j) == "table" and j.usage then return usage_error(j.usage) end
      error(j, 0)
    end
    if j then
      local cok, cerr = pcall(function()
        resume.cut(cmd.output, j.bytes)
        if cmd.error_log then resume.cut(cmd.error_log, j.error_log_bytes) end
      end)
      if not cok then return usage_error(type(cerr) == "table" and cerr.usage or tostring(cerr)) end
    end
    ctx.journal = j or { lines = 0, bytes = 0, errors = 0, error_log_bytes = 0 }
    ctx.resuming = j ~= nil
  end
  local out, oerr = output.open(cmd.output, ctx.resuming)
  if not out then return usage_error("cannot open the output: " .. oerr) end
  local log, lerr = output.errors(cmd.error_log, ctx.resuming)
  if not log then out:close(); return usage_error("cannot open the error log: " .. lerr) end
  if ctx.journal then log.count = ctx.journal.errors end
  ctx.out, ctx.log = out, log

  signals.ignore_sigpipe()
  local status = run(ctx)
  out:close()
  log:close()
  return status
end

function M.main(argv)
  local ok, cmd = pcall(args.parse, argv)
  if not ok then
    if type(cmd) == "table" and cmd.usage then return usage_error(cmd.usage) end
    error(cmd, 0)
  end
  if cmd.action == "help" then
    io.stdout:write(args.HELP)
    return 0
  elseif cmd.action == "version" then
    io.stdout:write(require("forkpool")._VERSION, "\n")
    return 0
  end
  return map(cmd)
end

return M
