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
--   forkpool.cli_signals  SIGPIPE ignored, SIGINT recorded between writes
--
-- The parent checks everything it can before any input is read (options,
-- the script loads and returns a function or a table with map, the inputs
-- open, the output opens), then runs pool:imap (imap_unordered with
-- --unordered) over the blocks with use_worker_state: the item is a block
-- { file, line, n, text, count }, the task jsonl.run_block(state, block),
-- one block per chunk.  Each block's result { out, n_in, n_out, errors,
-- fail } is written with one write, then the journal is updated (--resume),
-- then SIGINT is checked.

local args = require "forkpool.cli_args"
local input = require "forkpool.cli_input"
local output = require "forkpool.cli_output"
local resume = require "forkpool.cli_resume"
local signals = require "forkpool.cli_signals"

local M = {}

-- A run's end: its exit status and what to say on stderr.
local function usage_error(msg)
  io.stderr:write("forkpool: ", msg, " (see 'forkpool map --help')\n")
  return 2
end

local function fail(msg, status)
  io.stderr:write("forkpool map: ", msg, "\n")
  return status or 1
end

-- Load the script in the parent once, so that a script that does not load
-- or does not return what it must is reported before any input is read.
-- The workers load it again, by path (forkpool.jsonl's init).
local function check_script(path)
  local chunk, err = loadfile(path)
  if not chunk then return nil, "cannot load the script: " .. err end
  local ok, v = pcall(chunk)
  if not ok then return nil, ("the script %s raised an error while loading: %s"):format(path, tostring(v)) end
  if type(v) == "function" then return true end
  if type(v) == "table" and type(v.map) == "function" then
    for _, k in ipairs { "worker_init", "worker_exit" } do
      if v[k] ~= nil and type(v[k]) ~= "function" then
        return nil, ("the script %s returned a table whose %s is a %s, not a function"):format(path, k, type(v[k]))
      end
    end
    return true
  end
  return nil, ("the script %s must return a function, or a table with a 'map' function (it returned %s)")
    :format(path, type(v) == "table" and "a table without 'map'" or type(v))
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

  local pool = forkpool.new{ n_jobs = cmd.jobs, use_worker_state = true }
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

  local bar = cmd.progress and require("forkpool.progress").new{ desc = "forkpool map" }
  local imap = cmd.unordered and pool.imap_unordered or pool.imap
  local status

  -- Stop the workers now and end with status.
  local function stop(s, msg)
    if bar then bar:close() end
    pcall(pool.terminate, pool)
    if msg then io.stderr:write("forkpool map: ", msg, "\n") end
    return s
  end

  local ok, it = pcall(imap, pool, function(state, block) return run_block(state.w, block) end, source, {
    chunk_size = 1,
    worker_init = function(state) state.w = init(config) end,
    worker_exit = function(state) exit(state.w) end,
    max_retries = cmd.max_retries,
    task_timeout = cmd.task_timeout,
  })
  if not ok then return stop(1, tostring(it)) end

  while true do
    local got, res, idx = pcall(it)
    if signals.interrupted() or (not got and forkpool.is_error(res, "interrupted")) then
      return stop(130, "interrupted")
    end
    if not got then
      if type(res) == "table" and res.input then return stop(2, res.input) end
      return stop(1, where(blocks, res) .. tostring(res))
    end
    if res == nil then break end
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
      io.stderr:write(("%s:%s: %s\n"):format(e.file, e.line, tostring(e.message)))
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
    if signals.interrupted() then return stop(130, "interrupted") end
  end

  if bar then bar:close() end
  ok, status = pcall(pool.close, pool)
  if not ok then return fail(tostring(status)) end
  local cok, cerr = out:close()
  if not cok then return fail("cannot write the output: " .. tostring(cerr)) end
  if journal then resume.remove(cmd.output) end
  if log.count > 0 then
    io.stderr:write(("forkpool map: %d record%s failed%s\n"):format(log.count, log.count == 1 and "" or "s",
      cmd.error_log and (" (see " .. cmd.error_log .. ")") or ""))
  end
  return 0
end

-- Check and open everything, then run.
local function map(cmd)
  local ok, err = check_script(cmd.script)
  if not ok then return fail(err, 2) end
  err = input.check_readable(cmd.files)
  if err then return usage_error("cannot read the input: " .. err) end

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
  signals.watch_sigint()
  local status = run(ctx)
  signals.restore()
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
