-- forkpool.cli_args: the command line of `forkpool`: parsing and help.
--
--   parse(argv) -> cmd
--     cmd.action: "help", "version" or "map"; for "map", the fields listed
--     in DEFAULTS below plus script (path) and files (array; {"-"} when
--     none was given).
--   Raises { usage = "message" } for a usage error (the caller prints it
--   with a hint to --help and exits 2).
--
-- GNU style: options may come before, between or after the operands;
-- `--name=value` or `--name value`; `-jN`, `-j N`, `-oFILE`, `-o FILE`;
-- `--` ends the options; a lone `-` is an operand (stdin).

local floor = math.floor

local M = {}

M.USAGE = "usage: forkpool map [OPTIONS] SCRIPT.lua [FILE ...]"

M.HELP = M.USAGE .. [[


Runs SCRIPT.lua over JSON lines: reads FILEs in order (stdin when none, or
"-"), decodes each line in forked worker processes, calls the script's
function on it and writes each result as one JSON line, in input order.

SCRIPT.lua returns a function fn(record), or a table
{ map = fn, worker_init = f, worker_exit = g } (then fn(state, record),
state being what worker_init(config) returned).  A nil result drops the
record.

Options:
  -j, --jobs N          worker processes (default: the usable CPUs)
  -o, --output FILE     write to FILE instead of stdout
      --unordered       write results as blocks finish, not in input order
      --raw             lines in as Lua strings, results written with
                        tostring; no JSON
      --flat            an array result writes each element as its own line
      --chunk-size N    N lines per block sent to a worker (default: blocks
                        of about 64 KiB of whole lines)
      --task-timeout S  seconds one block may run; past it the run fails
      --max-retries K   re-run a block whose worker died, up to K times
      --progress        a progress bar (lines read) on stderr
      --errors MODE     fail (default): stop at the first bad record, exit 1;
                        skip: report each bad record, go on, exit 0
      --error-log FILE  with --errors skip: bad records as JSON lines
                        {file, line, kind, message} to FILE, not stderr
      --shard K/N       only lines n with (n - 1) % N == K - 1 (1 <= K <= N;
                        n counts the lines of all inputs from 1)
      --resume          with -o FILE: continue a killed run where it stopped
      --set KEY=VALUE   config.KEY = "VALUE" for worker_init (repeatable)
  -h, --help            this help
      --version         the version

Errors are reported as FILE:LINE: message ("-" is stdin).
Exit status: 0 done (also --errors skip with bad records, counted on
stderr), 1 a record failed (--errors fail) or the run failed, 2 usage
error, 130 interrupted (Ctrl-C).  A closed output (| head) ends the run
quietly with 0.
]]

-- The map command's settings and their defaults.
local DEFAULTS = {
  jobs = nil,           -- worker processes (nil: forkpool's default)
  output = nil,         -- path of -o, nil: stdout
  unordered = false,
  raw = false,
  flat = false,
  chunk_size = nil,     -- lines per block, nil: blocks of BLOCK_BYTES
  task_timeout = nil,   -- seconds per block
  max_retries = 0,
  progress = false,
  errors = "fail",      -- "fail" or "skip"
  error_log = nil,      -- path
  shard = nil,          -- { k = K, n = N }
  resume = false,
  set = nil,            -- { key = "value" } (a table, always set by parse)
}

local function usage(fmt, ...)
  error({ usage = fmt:format(...) }, 0)
end

local function integer(name, s, min)
  local v = tonumber(s)
  if not s:match("^%s*%d+%s*$") or not v or v < min or v >= 2^53 or v ~= floor(v) then
    usage("option %s: %s expected, got '%s'", name,
      min == 0 and "a non-negative integer" or "a positive integer", s)
  end
  return v
end

local function positive(name, s)
  local v = tonumber(s)
  if not v or not (v > 0 and v < math.huge) then
    usage("option %s: a positive number of seconds expected, got '%s'", name, s)
  end
  return v
end

-- Each option: its long name, short letter, whether it takes a value, and
-- what to do with it.
local OPTIONS = {
  { "jobs", "j", true, function(c, v) c.jobs = integer("--jobs", v, 1) end },
  { "output", "o", true, function(c, v)
      if v == "" then usage("option --output: a file name expected") end
      c.output = v
    end },
  { "unordered", nil, false, function(c) c.unordered = true end },
  { "raw", nil, false, function(c) c.raw = true end },
  { "flat", nil, false, function(c) c.flat = true end },
  { "chunk-size", nil, true, function(c, v) c.chunk_size = integer("--chunk-size", v, 1) end },
  { "task-timeout", nil, true, function(c, v) c.task_timeout = positive("--task-timeout", v) end },
  { "max-retries", nil, true, function(c, v) c.max_retries = integer("--max-retries", v, 0) end },
  { "progress", nil, false, function(c) c.progress = true end },
  { "errors", nil, true, function(c, v)
      if v ~= "fail" and v ~= "skip" then
        usage("option --errors: 'fail' or 'skip' expected, got '%s'", v)
      end
      c.errors = v
    end },
  { "error-log", nil, true, function(c, v)
      if v == "" then usage("option --error-log: a file name expected") end
      c.error_log = v
    end },
  { "shard", nil, true, function(c, v)
      local k, n = v:match("^(%d+)/(%d+)$")
      k, n = tonumber(k), tonumber(n)
      if not k then usage("option --shard: K/N expected (e.g. 2/8), got '%s'", v) end
      if n < 1 or k < 1 or k > n or n >= 2^53 then
        usage("option --shard: K/N with 1 <= K <= N expected, got '%s'", v)
      end
      c.shard = { k = k, n = n }
    end },
  { "resume", nil, false, function(c) c.resume = true end },
  { "set", nil, true, function(c, v)
      local key, value = v:match("^([^=]+)=(.*)$")
      if not key then usage("option --set: KEY=VALUE expected, got '%s'", v) end
      c.set[key] = value
    end },
  { "help", "h", false, function(c) c.action = "help" end },
  { "version", nil, false, function(c) c.action = "version" end },
}
local LONG, SHORT = {}, {}
for _, o in ipairs(OPTIONS) do
  LONG[o[1]] = o
  if o[2] then SHORT[o[2]] = o end
end

-- One option at argv[i] (known to start with "-" and not be "-" or "--").
-- Returns the index of the next argument.
local function option(c, argv, i)
  local a = argv[i]
  local o, value, shown
  if a:sub(1, 2) == "--" then
    local name, v = a:match("^%-%-([^=]+)=(.*)$")
    name = name or a:sub(3)
    o, value, shown = LONG[name], v, "--" .. name
    if not o then usage("unknown option '%s'", shown) end
    if not o[3] and value then usage("option %s takes no value", shown) end
  else
    shown = a:sub(1, 2)
    o = SHORT[a:sub(2, 2)]
    if not o then usage("unknown option '%s'", shown) end
    if #a > 2 then
      if not o[3] then usage("unknown option '%s'", a) end
      value = a:sub(3)
    end
  end
  if o[3] and value == nil then
    i = i + 1
    value = argv[i]
    if value == nil then usage("option %s needs a value", shown) end
  end
  o[4](c, value)
  return i + 1
end

function M.parse(argv)
  local c = {}
  for k, v in pairs(DEFAULTS) do c[k] = v end
  c.set = {}
  local operands = {}
  local i, n = 1, #argv
  while i <= n do
    local a = argv[i]
    if a == "--" then
      for j = i + 1, n do operands[#operands + 1] = argv[j] end
      break
    elseif a:sub(1, 1) == "-" and a ~= "-" then
      i = option(c, argv, i)
    else
      operands[#operands + 1] = a
      i = i + 1
    end
  end
  if c.action then return c end  -- --help, --version: whatever else was given
  local command = table.remove(operands, 1)
  if command == nil then usage("a command expected (forkpool map SCRIPT.lua [FILE ...])") end
  if command ~= "map" then usage("unknown command '%s' (the command is 'map')", command) end
  c.action = "map"
  c.script = table.remove(operands, 1)
  if c.script == nil then usage("the script is missing (forkpool map SCRIPT.lua [FILE ...])") end
  c.files = #operands > 0 and operands or { "-" }
  if c.resume and not c.output then usage("--resume needs -o FILE (it continues that file)") end
  if c.resume and c.unordered then
    usage("--resume works in input order only: it cannot be used with --unordered")
  end
  if c.error_log and c.errors ~= "skip" then
    usage("--error-log needs --errors skip (with --errors fail the first bad record stops the run)")
  end
  return c
end

return M
