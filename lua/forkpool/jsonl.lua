-- forkpool.jsonl: the worker side of `forkpool map` (issue 12).  It turns a
-- block of input lines into a block of output lines, inside a worker.
--
-- The parent (forkpool.cli) cuts its input into blocks of whole lines and
-- maps them with `use_worker_state = true`:
--
--   worker_init = function(state) jsonl.init(config, state) end
--   fn          = jsonl.run_block          -- fn(state, block) -> result
--   worker_exit = jsonl.exit               -- exit(state) -> the script's
--                                             worker_exit result, or nil
--
-- config (built by the parent; these names are stable):
--   script  string, the path of SCRIPT.lua (loaded in the worker, by path)
--   raw     boolean, --raw: lines in as Lua strings, results out with tostring
--   flat    boolean, --flat: an array result writes one line per element
--   errors  "fail" (default) or "skip"
--   shard   { k, n } (1 <= k <= n) or nil: keep only lines whose global line
--           number g has (g - 1) % n == k - 1
--   set     table of the --set key=value pairs (values are strings), or nil
--           (then {}): what the script's worker_init receives
--
-- block (one item of the map):
--   file    the input's name as given ("-" for stdin)
--   line    line number, in that file, of the block's first line
--   n       global input line number of the block's first line (all inputs,
--           in order, counted from 1): the shard rule uses it
--   text    the lines, each ending in "\n" except possibly a file's last
--
-- result of run_block:
--   out     string: the output lines, each ending in "\n", in input order
--   n_in    number of lines read (with errors = "fail": up to and including
--           the failing line)
--   n_out   number of lines in out
--   errors  nil, or (errors = "skip") an array of { file, line, kind,
--           message } in line order: the records that were left out
--   fail    nil, or (errors = "fail") the first error { file, line, kind,
--           message }; out then holds only the lines before it
-- kind is "json" (the line is not JSON), "task" (the script raised), "encode"
-- (the result cannot be written as JSON) or "utf8" (invalid UTF-8 in a line,
-- or in a result); message never repeats file and line.
--
-- SCRIPT.lua returns fn (called fn(record)) or { map = fn, worker_init = f,
-- worker_exit = g } (then fn(state, record); state is what worker_init(set)
-- returned, or a fresh table when it returned nil or there is none; g(state)
-- runs when the worker stops).
--
-- Decisions (README "forkpool map" says the same to users):
-- * Lines: a block's lines are split at "\n".  In JSON mode a line that is
--   empty or only JSON whitespace (space, tab, "\r") is skipped: counted in
--   n_in, never a record.  "\r\n" endings need nothing (the "\r" is JSON
--   whitespace).  In raw mode the line reaches fn without its "\n" and
--   without one trailing "\r" (like Go's bufio.ScanLines); every line is a
--   record, empty ones too.
-- * Results: nil drops the record (a filter).  JSON mode writes the
--   result's JSON text (below); raw mode tostring(result).  With flat, a
--   table whose keys are all positive integers (an array, by the rule
--   below) writes each element res[1..max] as its own line (nil holes are
--   skipped); an empty table writes nothing; anything else is one line.  A
--   record's lines are written all or none.
-- * Writing JSON: forkpool.core.json_encode (engine/fp_json.c, whose header
--   is the reference), the same bytes for the same value in every process
--   and every run:
--   - object keys sorted bytewise (memcmp order, a shorter key before a
--     longer one it begins); a number key is written as its number's text,
--     and before a string key with the same text.
--   - numbers: integers below 2^53 in magnitude as plain digits
--     (1700000000123456, -0); any other number as the shortest of %.15g,
--     %.16g, %.17g that reads back as the same double (0.1 + 0.2 ->
--     0.30000000000000004, 1e+21), whatever the locale.  So every number
--     read from a line is written back as the same double.  Integers beyond
--     2^53 were already rounded when the line was decoded (Lua numbers are
--     doubles).
--   - strings: UTF-8 is checked (a result holding invalid UTF-8 is a "utf8"
--     error naming the value's path, e.g. $.tags[3], and the byte); '"',
--     '\' and bytes below 0x20 are escaped; "/" is written as is (lua-cjson
--     writes "\/").
--   - NaN and infinities, functions, userdata other than cjson.null,
--     cdata, coroutines, keys that are neither strings nor numbers, sparse
--     arrays (lua-cjson's rule: more than 10 elements and less than half of
--     them set) and tables nested deeper than 1000 are "encode" errors
--     naming the value's path.  Metatables are ignored.
--   - empty tables are written {} (lua-cjson 2.1.0 decodes [] and {} to the
--     same empty table).  So [] comes out as {}.
-- * Reading JSON: our own lua-cjson instance (cjson.new(), so a script that
--   changes `require "cjson"`'s settings does not change ours), strict:
--   decode_invalid_numbers(false) (NaN, Infinity and hex are not JSON);
--   nesting up to 1000 levels (cjson's default).  "\u00e9" escapes decode
--   to UTF-8 and are written as the UTF-8 bytes.
-- * UTF-8: a line of invalid UTF-8 (overlong forms, surrogates, bytes that
--   are never UTF-8, truncated sequences) is a "utf8" error naming the
--   byte: one FFI pass over the block (eight bytes at a time while they are
--   ASCII), nothing per line.  Results are checked by the encoder as it
--   writes them.  Raw mode passes bytes and checks nothing.
-- The JSON text rules (the encoder, our cjson instance, UTF-8 checks) are
-- reached through forkpool.jsontext.
-- * Speed: the lines of a block run in one loop inside one pcall; after a
--   failure the loop is entered again at the next line.  The loop's
--   progress lives in this module's upvalues (so run_block is not
--   re-entrant: a script must not call it).


local find, sub, byte, format = string.find, string.sub, string.byte, string.format
local concat = table.concat
local type, tostring, pcall, next = type, tostring, pcall, next
local table_clear = require "table.clear"

local M = {}

local jsontext = require "forkpool.jsontext"
local decode, encode = jsontext.decode, jsontext.encode
local first_bad = jsontext.first_bad
M._first_bad_utf8 = first_bad  -- (for the spec)

------------------------------------------------------------------------
-- Loading the script
------------------------------------------------------------------------

-- load(path) -> { map = fn, worker_init = f|nil, worker_exit = g|nil,
-- table_script = boolean }, or nil and a message naming the path.  The
-- parent can call it to check a script before starting workers (it runs the
-- script's top level, in the parent).
function M.load(path)
  if type(path) ~= "string" then return nil, "no script given" end
  local chunk, err = loadfile(path)
  if not chunk then return nil, tostring(err) end
  local ok, v = pcall(chunk)
  if not ok then return nil, path .. ": the script raised: " .. tostring(v) end
  if type(v) == "function" then
    return { map = v, table_script = false }
  elseif type(v) == "table" then
    local map, init, exit = v.map, v.worker_init, v.worker_exit
    if type(map) ~= "function" then
      return nil, path .. ": the returned table has no 'map' function"
    end
    if init ~= nil and type(init) ~= "function" then
      return nil, path .. ": 'worker_init' is not a function"
    end
    if exit ~= nil and type(exit) ~= "function" then
      return nil, path .. ": 'worker_exit' is not a function"
    end
    return { map = map, worker_init = init, worker_exit = exit, table_script = true }
  end
  return nil, path .. ": the script must return a function or a table " ..
    "{ map = fn, worker_init = f, worker_exit = g } (it returned " .. type(v) .. ")"
end

-- init(config [, state]) -> state: loads the script, runs its worker_init
-- and fills state (the pool's worker_state table, or a new one).  Raises
-- when the configuration or the script is bad.
--
-- state's fields (written here only, read by run_block and exit):
--   call      function(ustate, record): the script's fn
--   ustate    the script's state (table scripts), or nil
--   script    the loaded script (see load)
--   raw, flat, fail (errors == "fail"), shard_k, shard_n (1, 1 unsharded)
function M.init(config, state)
  if type(config) ~= "table" then error("jsonl.init: config table expected", 2) end
  local errors = config.errors or "fail"
  if errors ~= "fail" and errors ~= "skip" then
    error("jsonl.init: config.errors must be \"fail\" or \"skip\"", 2)
  end
  local k, n = 1, 1
  if config.shard ~= nil then
    local sh = config.shard
    k, n = type(sh) == "table" and sh[1], type(sh) == "table" and sh[2]
    if type(k) ~= "number" or type(n) ~= "number" or k % 1 ~= 0 or n % 1 ~= 0
      or k < 1 or k > n then
      error("jsonl.init: config.shard must be { k, n } with 1 <= k <= n", 2)
    end
  end
  local script, err = M.load(config.script)
  if not script then error(err, 0) end
  state = state or {}
  local map = script.map
  local ustate
  if script.table_script then
    if script.worker_init then ustate = script.worker_init(config.set or {}) end
    if ustate == nil then ustate = {} end
    state.call = map
  else
    state.call = function(_, record) return map(record) end
  end
  state.ustate = ustate
  state.script = script
  state.raw = not not config.raw
  state.flat = not not config.flat
  state.fail = errors == "fail"
  state.shard_k, state.shard_n = k, n
  return state
end

-- exit(state) -> what the script's worker_exit(ustate) returned, or nil.
function M.exit(state)
  local script = state and state.script
  if script and script.worker_exit then return (script.worker_exit(state.ustate)) end
  return nil
end

------------------------------------------------------------------------
-- The loop over a block's lines
------------------------------------------------------------------------
-- The registers of the loop, for one run_block at a time: the handler reads
-- them after a failure to know where it happened.
local T, LEN       -- the block's text and its length
local P            -- start of the current line
local LN           -- index of the current line in the block (0-based)
local CD, SKIP     -- shard countdown: a line runs when CD is 0, then CD = SKIP
local BAD          -- position of the next invalid UTF-8 byte (or LEN + 1)
local STAGE        -- 0 utf8 check, 1 decode, 2 fn, 3 encode
local OUT, NOUT = {}, 0  -- output lines (no "\n")
local CALL, US, FLAT

local UTF8 = {}  -- the error value of an invalid line (a marker)

-- next_bad() -> position of the first invalid UTF-8 byte at or after P, or
-- LEN + 1.
local function next_bad()
  return first_bad(T, P) or LEN + 1
end

-- flat_len(t) -> the largest key when every key of t is a positive
-- integer (0 for an empty table), or nil.
local function flat_len(t)
  local max = 0
  for k in next, t do
    if type(k) ~= "number" or k < 1 or k % 1 ~= 0 then return nil end
    if k > max then max = k end
  end
  return max
end

-- Why the encoder refused the current result: kind ("utf8" | "encode")
-- and message ("PATH: what"); raised as the error ENCODE (a marker).
local ENC_KIND, ENC_MSG
local ENCODE = {}

-- The JSON text of a result (or of its i-th element, with --flat: the
-- path in a message then starts $[i]).
local function json_text(x, i)
  local s, kind, msg = encode(x)
  if s then return s end
  ENC_KIND = kind
  ENC_MSG = i and ("$[" .. i .. "]" .. sub(msg, 2)) or msg
  error(ENCODE)
end

-- Append the line(s) of the current line's result, made by text(x, i):
-- with --flat, one per element of an array result.  NOUT moves only once every
-- line is made, so a record's lines are written all or none.
local function emit(res, text)
  local m = FLAT and type(res) == "table" and flat_len(res)
  if m then
    local k = NOUT
    for i = 1, m do
      local x = res[i]
      if x ~= nil then
        k = k + 1
        OUT[k] = text(x, i)
      end
    end
    NOUT = k
  else
    local k = NOUT + 1
    OUT[k] = text(res)
    NOUT = k
  end
end

local function json_loop()
  while P <= LEN do
    local nl = find(T, "\n", P, true) or LEN + 1
    if CD == 0 then
      CD = SKIP
      if BAD < nl then
        if BAD < P then BAD = next_bad() end  -- it was in a line the shard skipped
        if BAD < nl then STAGE = 0; error(UTF8) end
      end
      STAGE = 1
      local rec = decode(sub(T, P, nl - 1))
      STAGE = 2
      local res = CALL(US, rec)
      if res ~= nil then
        STAGE = 3
        emit(res, json_text)
      end
    else
      CD = CD - 1
    end
    P = nl + 1
    LN = LN + 1
  end
end

local function raw_loop()
  while P <= LEN do
    local nl = find(T, "\n", P, true) or LEN + 1
    if CD == 0 then
      CD = SKIP
      STAGE = 2
      local e = nl - 1
      if e >= P and byte(T, e) == 13 then e = e - 1 end
      local res = CALL(US, sub(T, P, e))
      if res ~= nil then emit(res, tostring) end
    else
      CD = CD - 1
    end
    P = nl + 1
    LN = LN + 1
  end
end

-- The message of an error value (a string, a table with a message, or
-- anything tostring can show).
local function message_of(err)
  if type(err) == "string" then return err end
  if type(err) == "table" and type(err.message) == "string" then return err.message end
  local ok, s = pcall(tostring, err)
  return ok and s or "(an error value that tostring cannot show)"
end

-- lua-cjson's message without the "file:line: " that luaL_error put in
-- front (the place in this module that called cjson, of no use to users).
-- (Also for any other error raised while writing: out of memory.)
local function cjson_message(err)
  return (message_of(err):gsub("^[^\n]-:%d+: ", "", 1))
end

-- What went wrong at the current line: kind and message, or nil for a
-- blank line (JSON mode: skipped, not an error).
local function classify(err, nl)
  if STAGE == 0 then
    return "utf8", format("invalid UTF-8 at byte %d of the line", BAD - P + 1)
  elseif STAGE == 1 then
    if find(T, "^[ \t\r]*\n", P) or (nl > LEN and not find(T, "[^ \t\r]", P)) then
      return nil
    end
    return "json", "invalid JSON: " .. cjson_message(err)
  elseif STAGE == 2 then
    return "task", message_of(err)
  end
  if err == ENCODE then
    if ENC_KIND == "utf8" then return "utf8", "the result is not valid UTF-8: " .. ENC_MSG end
    return "encode", "cannot write the result as JSON: " .. ENC_MSG
  end
  return "encode", "cannot write the result as JSON: " .. cjson_message(err)
end

-- run_block(state, block) -> { out, n_in, n_out, errors, fail } (see the
-- header).
function M.run_block(state, block)
  local text = block.text
  T, LEN, P, LN = text, #text, 1, 0
  SKIP = state.shard_n - 1
  -- lines to skip before the first kept one: the block's first line has
  -- global number block.n
  CD = ((state.shard_k - 1) - (block.n - 1)) % state.shard_n
  CALL, US, FLAT = state.call, state.ustate, state.flat
  NOUT = 0
  local raw, failmode = state.raw, state.fail
  local loop = raw and raw_loop or json_loop
  BAD = (not raw and first_bad(text, 1)) or LEN + 1
  local fail, errors
  while true do
    local ok, err = pcall(loop)
    if ok then break end
    local nl = find(T, "\n", P, true) or LEN + 1
    local kind, msg = classify(err, nl)
    if kind then
      local e = { file = block.file, line = block.line + LN, kind = kind, message = msg }
      if failmode then
        fail = e
        LN = LN + 1
        break
      end
      errors = errors or {}
      errors[#errors + 1] = e
    end
    if STAGE == 0 then BAD = first_bad(T, nl + 1) or LEN + 1 end
    P, LN = nl + 1, LN + 1
  end
  local out = ""
  if NOUT > 0 then
    OUT[NOUT + 1] = ""
    out = concat(OUT, "\n", 1, NOUT + 1)
  end
  local n_out = NOUT
  -- let the block's strings go (OUT is reused)
  table_clear(OUT)
  T, CALL, US = nil, nil, nil
  return { out = out, n_in = LN, n_out = n_out, errors = errors, fail = fail }
end

return M
