-- forkpool.jsonl: the worker side of `forkpool map` (issue 12).  run_block
-- is tested directly in the busted process (it needs no pool); the last
-- test runs it in real workers (pool:imap over blocks, in a child process
-- with a deadline).
local jsonl = require "forkpool.jsonl"
local cjson = require "cjson"
local util = require "support.util"

local scripts = {}

-- script(code) -> path of a temporary SCRIPT.lua holding code
local function script(code)
  local path = os.tmpname()
  local f = assert(io.open(path, "w"))
  f:write(code)
  f:close()
  scripts[#scripts + 1] = path
  return path
end

local IDENTITY = "return function(r) return r end"

-- setup(code, config) -> state
local function setup(code, config)
  config = config or {}
  config.script = script(code)
  return jsonl.init(config)
end

-- block(text [, line [, n [, file]]])
local function block(text, line, n, file)
  return { file = file or "in.jsonl", line = line or 1, n = n or line or 1, text = text }
end

-- lines(s) -> array of the lines of s (each ended by "\n")
local function lines(s)
  local t = {}
  for l in s:gmatch("([^\n]*)\n") do t[#t + 1] = l end
  return t
end

describe("forkpool.jsonl", function()
  teardown(function()
    for _, p in ipairs(scripts) do os.remove(p) end
  end)

  describe("JSON lines", function()
    it("maps each line, in order, each output line ending in a newline", function()
      local st = setup("return function(r) r.y = r.x * 2; return r end")
      local r = jsonl.run_block(st, block('{"x":1}\n{"x":2}\n{"x":3}\n'))
      local out = lines(r.out)
      assert.equal(3, #out)
      for i = 1, 3 do
        assert.same({ x = i, y = 2 * i }, cjson.decode(out[i]))
      end
      assert.equal("\n", r.out:sub(-1))
      assert.equal(3, r.n_in)
      assert.equal(3, r.n_out)
      assert.is_nil(r.errors)
      assert.is_nil(r.fail)
    end)

    it("takes the last line without a newline, and CRLF lines", function()
      local st = setup(IDENTITY)
      local r = jsonl.run_block(st, block('{"a":1}\r\n[1,2]\r\n"s"'))
      assert.equal('{"a":1}\n[1,2]\n"s"\n', r.out)
      assert.equal(3, r.n_in)
      assert.equal(3, r.n_out)
    end)

    it("skips empty and whitespace-only lines, counting them as lines", function()
      local st = setup(IDENTITY, { errors = "fail" })
      local r = jsonl.run_block(st, block('\n1\n  \t\r\n\n2\n \t'))
      assert.equal("1\n2\n", r.out)
      assert.equal(6, r.n_in)
      assert.equal(2, r.n_out)
      assert.is_nil(r.fail)
    end)

    it("gives an empty block no lines", function()
      local st = setup(IDENTITY)
      local r = jsonl.run_block(st, block(""))
      assert.same({ out = "", n_in = 0, n_out = 0 }, r)
    end)

    it("drops records whose result is nil (a filter)", function()
      local st = setup("return function(r) if r.keep then return r.v end end")
      local r = jsonl.run_block(st, block('{"keep":true,"v":1}\n{"v":2}\n{"keep":true,"v":3}\n'))
      assert.equal("1\n3\n", r.out)
      assert.equal(3, r.n_in)
      assert.equal(2, r.n_out)
    end)

    it("uses its own cjson: a script's cjson settings change nothing", function()
      local st = setup([[
        local cjson = require "cjson"
        cjson.encode_number_precision(3)
        cjson.encode_invalid_numbers(true)
        return function(r) return r end
      ]])
      local r = jsonl.run_block(st, block('3.14159265\n'))
      assert.equal("3.14159265\n", r.out)
      cjson.encode_number_precision(14)
      cjson.encode_invalid_numbers(false)
    end)
  end)

  describe("core.json_encode (the writer)", function()
    local enc = require("forkpool.core").json_encode

    it("returns the text, or nil, kind, 'PATH: message', path", function()
      assert.equal('{"a":[1,"x"],"b":null}', enc({ b = cjson.null, a = { 1, "x" } }))
      assert.equal("null", enc())
      assert.equal("null", enc(nil))
      assert.same({ nil, "encode", "$.a[2]: NaN is not JSON", "$.a[2]" }, { enc({ a = { 1, 0 / 0 } }) })
      assert.same({ nil, "utf8", '$["k e y"]: invalid UTF-8 at byte 2 of the string', '$["k e y"]' },
        { enc({ ["k e y"] = "a\255" }) })
      assert.same({ nil, "encode", "$.f: a function is not JSON", "$.f" }, { enc({ f = print }) })
    end)

    it("runs no metamethod and leaves the value as it was", function()
      local t = setmetatable({ x = 1 }, { __index = error, __newindex = error, __pairs = error })
      assert.equal('{"x":1}', enc(t))
      assert.equal(1, rawget(t, "x"))
    end)
  end)

  describe("round trips", function()
    local function roundtrip(text)
      local st = setup(IDENTITY)
      local r = jsonl.run_block(st, block(text))
      assert.is_nil(r.fail)
      return r.out
    end

    it("keeps numbers: integers, decimals of up to 14 digits, exponents", function()
      local nums = { "0", "-1", "42", "123456789", "99999999999999", "-99999999999999",
        "0.1", "-2.5", "3.1415926535898", "1e-07", "1.5e-300", "1e+300", "6.02214076e+23" }
      local out = lines(roundtrip(table.concat(nums, "\n") .. "\n"))
      for i, s in ipairs(nums) do
        assert.equal(tonumber(s), tonumber(out[i]), s)
        assert.equal(s, out[i])
      end
    end)

    it("writes every number exactly: integers below 2^53 as digits, others shortest", function()
      local cases = {
        { "1700000000123456", "1700000000123456" },      -- a microsecond timestamp
        { "9007199254740992", "9007199254740992" },      -- 2^53
        { "9007199254740993", "9007199254740992" },      -- (rounded when decoded)
        { "-123456789012345", "-123456789012345" },
        { "100000000000000", "100000000000000" },
        { "1e15", "1000000000000000" },
        { "1e16", "1e+16" },
        { "1e21", "1e+21" },
        { "-0", "-0" },
        { "0.30000000000000004", "0.30000000000000004" },
        { "0.3333333333333333", "0.3333333333333333" },
        { "5e-324", "4.94065645841247e-324" },
        { "1.2345678901234567e+20", "1.2345678901234567e+20" },
        { "1.5e+300", "1.5e+300" },
        { "52.520008", "52.520008" },
      }
      local text = {}
      for i, c in ipairs(cases) do text[i] = '{"v":' .. c[1] .. ',"w":[' .. c[1] .. ']}' end
      local out = lines(roundtrip(table.concat(text, "\n") .. "\n"))
      for i, c in ipairs(cases) do
        assert.equal('{"v":' .. c[2] .. ',"w":[' .. c[2] .. ']}', out[i])
        local v = cjson.decode(out[i])
        assert.equal(tonumber(c[1]), v.v, c[1])
      end
      -- (what lua-cjson 2.1.0 writes by itself, for comparison)
      assert.equal("1.7000000001235e+15", cjson.encode(1700000000123456))
    end)

    it("writes 0.1 + 0.2 as 0.30000000000000004 (lua-cjson wrote 0.3)", function()
      local st = setup("return function(r) return r.a + r.b end")
      assert.equal("0.30000000000000004\n", jsonl.run_block(st, block('{"a":0.1,"b":0.2}\n')).out)
    end)

    it("sorts object keys bytewise, writes number keys as strings, does not escape /", function()
      local st = setup([[
        return function(r)
          return { zeta = 1, Alpha = 2, alpha = { b = 1, a = 2, ["a b"] = 3, ab = 4 },
            [10] = "ten", [9] = "nine", ["/path"] = "a/b", ["\u{e9}"] = true }
        end
      ]])
      assert.equal('{"/path":"a/b","10":"ten","9":"nine","Alpha":2,' ..
        '"alpha":{"a":2,"a b":3,"ab":4,"b":1},"zeta":1,"\195\169":true}\n',
        jsonl.run_block(st, block("1\n")).out)
    end)

    it("a string holding e+ is not a number", function()
      assert.equal('["1e+99 x","a1e+5"]\n', roundtrip('["1e+99 x","a1e+5"]\n'))
    end)

    it("decodes unicode escapes to UTF-8 and keeps UTF-8 text", function()
      local out = lines(roundtrip('"\\u00e9\\u4e2d\\ud83d\\ude00"\n"é中😀"\n"\\u0000\\n\\"\\\\"\n'))
      assert.equal('"é中😀"', out[1])
      assert.equal('"é中😀"', out[2])
      assert.equal('"\\u0000\\n\\"\\\\"', out[3])
    end)

    it("keeps nested tables; writes empty arrays and objects as {} (lua-cjson 2.1.0)", function()
      local text = '{"a":{"b":[1,[2,[3,{"c":null}]]],"t":true,"f":false}}\n[]\n{}\n{"e":[]}\n'
      local out = lines(roundtrip(text))
      assert.same(cjson.decode('{"a":{"b":[1,[2,[3,{"c":null}]]],"t":true,"f":false}}'),
        cjson.decode(out[1]))
      assert.equal("{}", out[2])
      assert.equal("{}", out[3])
      assert.equal('{"e":{}}', out[4])
    end)

    it("carries a 100 MiB line", function()
      local big = '{"s":"' .. string.rep("abcdefgh", 100 * 2 ^ 20 / 8) .. '"}'
      local st = setup("return function(r) return { n = #r.s, s = r.s } end")
      local r = jsonl.run_block(st, block(big .. '\n{"s":"x"}\n'))
      assert.is_nil(r.fail)
      assert.equal(2, r.n_out)
      local first = r.out:sub(1, r.out:find("\n", 1, true) - 1)
      assert.equal(#big + #',"n":104857600', #first)
      assert.equal(104857600, cjson.decode(first).n)
      assert.equal('{"n":1,"s":"x"}\n', r.out:sub(#first + 2))
    end)
  end)

  describe("bad lines", function()
    local BAD = table.concat({
      '{"ok":1}',
      'not json',            -- 2: json
      '{"ok":2}',
      '{"boom":true}',       -- 4: task
      '{"nan":true}',        -- 5: encode (NaN)
      '"\255"',              -- 6: utf8 (never UTF-8)
      '{"ok":3}',
      '"\192\175"',          -- 8: utf8 (overlong)
      '"\237\160\128"',      -- 9: utf8 (surrogate)
      '{"fn":true}',         -- 10: encode (function)
      '{"sparse":true}',     -- 11: encode (sparse array)
      '{"cut":true}',        -- 12: utf8 in the result
      '{"ok":4}',
      '{"ok":5',             -- 14: json (truncated)
      '"\226\130"',          -- 15: utf8 (truncated sequence), the last line
    }, "\n")
    local SCRIPT = [[
      return function(r)
        if r.boom then error("boom at record") end
        if r.nan then return { v = 0 / 0 } end
        if r.fn then return { f = print } end
        if r.sparse then return { [1] = 1, [100] = 2 } end
        if r.cut then return ("é"):sub(1, 1) end
        return r
      end
    ]]

    it("--errors skip: each bad record is an error in line order; the rest is written", function()
      local st = setup(SCRIPT, { errors = "skip" })
      local r = jsonl.run_block(st, block(BAD, 11, 111, "data.jsonl"))
      assert.equal('{"ok":1}\n{"ok":2}\n{"ok":3}\n{"ok":4}\n', r.out)
      assert.equal(15, r.n_in)
      assert.equal(4, r.n_out)
      assert.is_nil(r.fail)
      local got = {}
      for i, e in ipairs(r.errors) do
        assert.equal("data.jsonl", e.file)
        assert.is_string(e.message)
        got[i] = { e.line - 10, e.kind }
      end
      assert.same({ { 2, "json" }, { 4, "task" }, { 5, "encode" }, { 6, "utf8" }, { 8, "utf8" },
        { 9, "utf8" }, { 10, "encode" }, { 11, "encode" }, { 12, "utf8" }, { 14, "json" },
        { 15, "utf8" } }, got)
      local msg = {}
      for _, e in ipairs(r.errors) do msg[e.line - 10] = e.message end
      assert.equal("invalid JSON: Expected value but found invalid token at character 1", msg[2])
      assert.matches("boom at record", msg[4], 1, true)
      assert.equal("cannot write the result as JSON: $.v: NaN is not JSON", msg[5])
      assert.equal("invalid UTF-8 at byte 2 of the line", msg[6])
      assert.equal("cannot write the result as JSON: $.f: a function is not JSON", msg[10])
      assert.equal("cannot write the result as JSON: $: excessively sparse array", msg[11])
      assert.equal("the result is not valid UTF-8: $: invalid UTF-8 at byte 1 of the string", msg[12])
    end)

    it("--errors fail: stops at the first bad record, out holds the lines before it", function()
      local st = setup(SCRIPT, { errors = "fail" })
      local r = jsonl.run_block(st, block(BAD, 11, 111, "data.jsonl"))
      assert.equal('{"ok":1}\n', r.out)
      assert.equal(1, r.n_out)
      assert.equal(2, r.n_in)
      assert.is_nil(r.errors)
      assert.same({ file = "data.jsonl", line = 12, kind = "json",
        message = "invalid JSON: Expected value but found invalid token at character 1" }, r.fail)
    end)

    -- The first bad line of each kind, alone after a good one, with --errors fail.
    for _, c in ipairs({
      { "task", '{"boom":true}' }, { "encode", '{"nan":true}' }, { "utf8", '"\255"' },
      { "utf8", '{"cut":true}' }, { "json", '{"ok":5' },
    }) do
      it("--errors fail on a '" .. c[1] .. "' line: " .. c[2]:gsub("[\128-\255]", "?"), function()
        local st = setup(SCRIPT, { errors = "fail" })
        local r = jsonl.run_block(st, block('{"ok":1}\n' .. c[2] .. '\n{"ok":2}\n', 5, 5))
        assert.equal('{"ok":1}\n', r.out)
        assert.equal(1, r.n_out)
        assert.equal(2, r.n_in)
        assert.equal(6, r.fail.line)
        assert.equal(c[1], r.fail.kind)
      end)
    end

    it("a 'utf8' result error after a later failure still wins by line order", function()
      local st = setup(SCRIPT, { errors = "fail" })
      local r = jsonl.run_block(st, block('{"cut":true}\n{"ok":1}\nnope\n'))
      assert.equal("", r.out)
      assert.equal(0, r.n_out)
      assert.equal(1, r.fail.line)
      assert.equal("utf8", r.fail.kind)
    end)

    it("checks UTF-8 exactly (RFC 3629)", function()
      local fb = jsonl._first_bad_utf8
      for _, ok in ipairs({ "", "abc", "é", "中", "😀", "\127", "\244\143\191\191", "aé中😀z" }) do
        assert.is_nil(fb(ok, 1), ok)
      end
      for s, at in pairs({ ["\128"] = 1, ["a\192\128"] = 2, ["ab\193\191"] = 3, ["\224\159\191"] = 1,
        ["\237\160\128"] = 1, ["\240\143\191\191"] = 1, ["\244\144\128\128"] = 1,
        ["\245\128\128\128"] = 1, ["é\195"] = 3, ["12345678\255"] = 9, ["\226\130"] = 1,
        ["\226\40\161"] = 1 }) do
        assert.equal(at, fb(s, 1), s)
      end
    end)

    it("a task error's message is the error value's (tables with message, others by tostring)", function()
      local st = setup([[
        return function(r)
          if r == 1 then error({ message = "a table error" }) end
          if r == 2 then error(setmetatable({}, { __tostring = function() return "shown" end })) end
          error(42)
        end
      ]], { errors = "skip" })
      local r = jsonl.run_block(st, block("1\n2\n3\n"))
      assert.equal("a table error", r.errors[1].message)
      assert.equal("shown", r.errors[2].message)
      assert.matches(":4: 42$", r.errors[3].message)  -- (Lua adds the place to a number)
    end)
  end)

  describe("--shard K/N", function()
    it("keeps the lines whose global number n has (n - 1) % N == K - 1, across blocks", function()
      -- 20 lines in three blocks of 7, 6 and 7 lines; global numbering from 1
      local all = {}
      for i = 1, 20 do all[i] = tostring(i) end
      local blocks = {
        block(table.concat(all, "\n", 1, 7) .. "\n", 1, 1, "a"),
        block(table.concat(all, "\n", 8, 13) .. "\n", 1, 8, "b"),
        block(table.concat(all, "\n", 14, 20), 7, 14, "b"),
      }
      local union = {}
      for k = 1, 3 do
        local st = setup(IDENTITY, { shard = { k, 3 } })
        local got, n_in = {}, 0
        for _, b in ipairs(blocks) do
          local r = jsonl.run_block(st, b)
          n_in = n_in + r.n_in
          for _, l in ipairs(lines(r.out)) do got[#got + 1] = tonumber(l) end
        end
        assert.equal(20, n_in)
        for _, v in ipairs(got) do
          assert.equal(k - 1, (v - 1) % 3)
          assert.is_nil(union[v])
          union[v] = true
        end
      end
      for i = 1, 20 do assert.is_true(union[i], i) end
    end)

    it("1/1 keeps everything; errors in skipped lines are not seen", function()
      local st = setup(IDENTITY, { shard = { 1, 1 }, errors = "fail" })
      assert.equal("1\n2\n", jsonl.run_block(st, block("1\n2\n")).out)
      st = setup(IDENTITY, { shard = { 2, 2 }, errors = "fail" })
      local r = jsonl.run_block(st, block("bad\n2\n\255\n4\n"))
      assert.equal("2\n4\n", r.out)
      assert.is_nil(r.fail)
      assert.equal(4, r.n_in)
    end)

    it("refuses a bad shard", function()
      for _, sh in ipairs({ { 0, 2 }, { 3, 2 }, { 1.5, 2 }, { 1 }, "1/2" }) do
        assert.has_error(function() setup(IDENTITY, { shard = sh }) end)
      end
    end)
  end)

  describe("--flat", function()
    it("writes each element of an array result as its own line", function()
      local st = setup([[
        return function(r)
          if r.kind == "arr" then return r.items end
          if r.kind == "holes" then return { 1, nil, 3 } end
          if r.kind == "empty" then return {} end
          if r.kind == "nan" then return { 1, 0 / 0 } end
          return r
        end
      ]], { flat = true, errors = "skip" })
      local r = jsonl.run_block(st, block(table.concat({
        '{"kind":"arr","items":[{"a":1},[2],"three"]}',
        '{"kind":"holes"}',
        '{"kind":"empty"}',
        '{"kind":"nan"}',
        '{"kind":"obj"}',
      }, "\n")))
      assert.equal('{"a":1}\n[2]\n"three"\n1\n3\n{"kind":"obj"}\n', r.out)
      assert.equal(6, r.n_out)
      assert.equal(5, r.n_in)
      assert.equal(1, #r.errors)
      assert.equal(4, r.errors[1].line)       -- the record's lines are written all or none
      assert.equal("encode", r.errors[1].kind)
      assert.equal("cannot write the result as JSON: $[2]: NaN is not JSON", r.errors[1].message)
    end)

    it("without --flat an array result is one line", function()
      local st = setup("return function(r) return r.items end")
      assert.equal("[1,2]\n", jsonl.run_block(st, block('{"items":[1,2]}\n')).out)
    end)
  end)

  describe("--raw", function()
    it("passes lines as strings without \\n or a trailing \\r, writes tostring", function()
      local st = setup([[
        return function(line)
          if line == "drop" then return nil end
          if line == "num" then return 1.5 end
          return "<" .. line .. ">"
        end
      ]], { raw = true })
      local r = jsonl.run_block(st, block('a\r\n\ndrop\nnum\n{not json}\n\255 bytes\nlast'))
      assert.equal('<a>\n<>\n1.5\n<{not json}>\n<\255 bytes>\n<last>\n', r.out)
      assert.equal(7, r.n_in)
      assert.equal(6, r.n_out)
    end)

    it("--raw --flat writes each element, a raising task is a 'task' error", function()
      local st = setup([[
        return function(line)
          if line == "x" then error("no x") end
          local t = {}
          for w in line:gmatch("%S+") do t[#t + 1] = w end
          return t
        end
      ]], { raw = true, flat = true, errors = "skip" })
      local r = jsonl.run_block(st, block("a b\nx\nc\n", 3, 3, "-"))
      assert.equal("a\nb\nc\n", r.out)
      assert.equal(1, #r.errors)
      assert.same({ "-", 4, "task" }, { r.errors[1].file, r.errors[1].line, r.errors[1].kind })
      assert.matches("no x", r.errors[1].message, 1, true)
    end)
  end)

  describe("scripts", function()
    it("a table script: worker_init gets --set, its state reaches map and worker_exit", function()
      local st = setup([[
        return {
          worker_init = function(config) return { seen = 0, tag = config.tag } end,
          map = function(state, r)
            state.seen = state.seen + 1
            return { tag = state.tag, v = r, seen = state.seen }
          end,
          worker_exit = function(state) return state.seen end,
        }
      ]], { set = { tag = "T" } })
      local r1 = jsonl.run_block(st, block("1\n2\n"))
      local r2 = jsonl.run_block(st, block("3\n", 3, 3))
      local out = lines(r1.out .. r2.out)
      assert.same({ tag = "T", v = 3, seen = 3 }, cjson.decode(out[3]))
      assert.equal(3, jsonl.exit(st))
    end)

    it("a table script without worker_init gets a fresh table; init fills a given state", function()
      local ws = {}
      local st = jsonl.init({ script = script([[
        return { map = function(state, r)
          state.n = (state.n or 0) + 1
          return state.n
        end }
      ]]) }, ws)
      assert.equal(ws, st)
      assert.equal("1\n2\n", jsonl.run_block(ws, block("10\n20\n")).out)
      assert.is_nil(jsonl.exit(ws))
    end)

    it("worker_init returning nil still gives a state table", function()
      local st = setup([[
        return { worker_init = function() end, map = function(s, r) return type(s) .. r end }
      ]])
      assert.equal('"table1"\n', jsonl.run_block(st, block("1\n")).out)
    end)

    it("load reports a bad script by its path", function()
      local cases = {
        { "return function(", "expected" },                          -- syntax error
        { "return 42", "must return a function or a table" },
        { "return { worker_init = function() end }", "no 'map' function" },
        { "return { map = function() end, worker_exit = 1 }", "'worker_exit' is not a function" },
        { "error('top level')", "top level" },
      }
      for _, c in ipairs(cases) do
        local path = script(c[1])
        local s, err = jsonl.load(path)
        assert.is_nil(s)
        assert.matches(path, err, 1, true)
        assert.matches(c[2], err, 1, true)
        assert.has_error(function() jsonl.init{ script = path } end)
      end
      local s, err = jsonl.load("/nonexistent/s.lua")
      assert.is_nil(s)
      assert.matches("/nonexistent/s.lua", err, 1, true)
    end)

    it("refuses a bad errors mode", function()
      assert.has_error(function() setup(IDENTITY, { errors = "ignore" }) end)
    end)
  end)

  describe("in real workers", function()
    it("pool:imap over blocks with use_worker_state runs init, run_block and exit", function()
      local path = script([[
        return {
          worker_init = function(config) return { n = 0, k = tonumber(config.k) } end,
          map = function(state, r)
            state.n = state.n + 1
            return { id = r.id, y = r.id * state.k }
          end,
          worker_exit = function(state) return state.n end,
        }
      ]])
      local ok, out = util.run_lua(([[
        local forkpool = require "forkpool"
        local jsonl = require "forkpool.jsonl"
        local cjson = require "cjson"
        local config = { script = %q, errors = "skip", set = { k = "3" } }
        local blocks, n = {}, 1
        for b = 1, 40 do
          local t = {}
          for i = 1, 25 do t[i] = cjson.encode({ id = n + i - 1 }) end
          blocks[b] = { file = "-", line = n, n = n, text = table.concat(t, "\n") .. "\n" }
          n = n + 25
        end
        blocks[41] = { file = "-", line = n, n = n, text = "oops\n" }
        local pool = forkpool.new{ n_jobs = 2, use_worker_state = true }
        local parts, n_in, errs = {}, 0, {}
        for r in pool:imap(jsonl.run_block, blocks, {
          chunk_size = 1,
          worker_init = function(state) jsonl.init(config, state) end,
          worker_exit = jsonl.exit,
        }) do
          parts[#parts + 1] = r.out
          n_in = n_in + r.n_in
          for _, e in ipairs(r.errors or {}) do errs[#errs + 1] = e.file .. ":" .. e.line .. ": " .. e.kind end
        end
        local exits = 0
        for _, v in ipairs(pool:get_exit_results()) do exits = exits + v end
        pool:close()
        local out = table.concat(parts)
        local i = 0
        for line in out:gmatch("[^\n]+") do
          i = i + 1
          local v = cjson.decode(line)
          assert(v.id == i and v.y == 3 * i, line)
        end
        io.write(("lines %%d n_in %%d exits %%d errors %%s\n"):format(i, n_in, exits, table.concat(errs, ",")))
      ]]):format(path), 60)
      assert.is_true(ok, out)
      assert.matches("lines 1000 n_in 1001 exits 1000 errors %-:1001: json", out)
    end)
  end)
end)
