-- Maps over the lines of a file (forkpool.lines): an iterator of
-- io.lines(path), io.lines() or file:lines() is read by the parent in
-- blocks and the workers cut the lines; the results must be those of a
-- plain loop over the same iterator.
local forkpool = require "forkpool"
local lines = require "forkpool.lines"
local ffi = require "ffi"
pcall(ffi.cdef, "int kill(int, int); int getpid(void);")

local tmp = os.tmpname()
local marker = tmp .. ".died"

local function write(bytes)
  local f = assert(io.open(tmp, "wb"))
  assert(f:write(bytes))
  assert(f:close())
end

-- What a plain loop over io.lines(tmp) gives.
local function plain_lines()
  local t = {}
  for l in io.lines(tmp) do t[#t + 1] = l end
  return t
end

-- Count the readers made (the fast path taken) while fn runs.
local function readers_during(fn)
  local real, made = lines.reader, 0
  lines.reader = function(it)
    local r = real(it)
    if r then made = made + 1 end
    return r
  end
  local ok, e = pcall(fn)
  lines.reader = real
  if not ok then error(e, 0) end
  return made
end

local function id(s) return s end

-- Close the file of a lines iterator left unfinished (the leak check
-- after this file counts descriptors; a collection may come too late).
local function close_file_of(it)
  local _, f = debug.getupvalue(it, 1)
  if io.type(f) == "file" then f:close() end
end

describe("maps over the lines of a file", function()
  local pool
  before_each(function() pool = forkpool.new{ n_jobs = 2, keep_alive = true } end)
  after_each(function()
    if pool then pool:close() end
    collectgarbage() -- (files of io.lines iterators left unfinished)
    os.remove(tmp)
    os.remove(marker)
  end)

  -- files whose lines must come out as a plain loop reads them
  local shapes = {
    empty = "",
    one_newline = "\n",
    no_final_newline = "a\nbb\nccc",
    crlf = "a\r\nb\r\n\r\n",
    blank_lines = "\n\n\nx\n\n",
    nul_bytes = "ab\0cd\nef\n\0\nlast\0x\ny\n",
    nul_at_end = "a\nb\0c",
    nul_only = "\0\0",
  }
  for name, bytes in pairs(shapes) do
    it("gives the lines of a plain loop: " .. name, function()
      write(bytes)
      local want = plain_lines()
      local got
      local made = readers_during(function() got = pool:map(id, io.lines(tmp)) end)
      assert.are.equal(1, made)
      assert.are.equal(#want, got.n)
      for i = 1, #want do assert.are.equal(want[i], got[i], "line " .. i) end
    end)
  end

  it("cuts many lines and long ones across reads the same way, for imap and imap_unordered", function()
    local parts = {}
    for i = 1, 30000 do
      parts[#parts + 1] = (i % 997 == 0) and ("long " .. ("x"):rep(70000 + i)) or ("line " .. i)
    end
    write(table.concat(parts, "\n") .. "\n")
    local want = plain_lines()
    assert.are.equal(30000, #want)
    local got = {}
    for v, i in pool:imap(function(s) return #s end, io.lines(tmp)) do got[i] = v end
    for i = 1, #want do assert.are.equal(#want[i], got[i], "line " .. i) end
    local seen, n = {}, 0
    for v, i in pool:imap_unordered(id, io.lines(tmp), { chunk_size = 7 }) do
      assert.are.equal(want[i], v)
      assert.is_nil(seen[i])
      seen[i], n = true, n + 1
    end
    assert.are.equal(#want, n)
  end)

  it("lets io.lines(path) close its file at the end, and leaves file:lines()'s open", function()
    write("1\n2\n3\n")
    local it = io.lines(tmp)
    local _, f = debug.getupvalue(it, 1)
    assert.are.same({ 1, 1, 1, n = 3 }, pool:map(function(s) return #s end, it))
    assert.are.equal("closed file", io.type(f))
    local g = assert(io.open(tmp))
    assert.are.same({ "1", "2", "3", n = 3 }, pool:map(id, g:lines()))
    assert.are.equal("file", io.type(g))
    assert.is_nil(g:read("*l"))
    g:close()
  end)

  it("reads on from where the file's stream is, and from io.lines() (stdin) too", function()
    write("skip\nkeep 1\nkeep 2\n")
    local g = assert(io.open(tmp))
    assert.are.equal("skip", g:read("*l"))
    assert.are.same({ "keep 1", "keep 2", n = 2 }, pool:map(id, g:lines()))
    g:close()
    -- io.lines() reads io.input(): point it at the file
    local saved = io.input()
    io.input(tmp)
    local ok, got = pcall(pool.map, pool, id, io.lines())
    local f = io.input()
    io.input(saved)
    f:close()
    assert.is_true(ok, got)
    assert.are.same({ "skip", "keep 1", "keep 2", n = 3 }, got)
  end)

  it("leaves other iterators alone: formats, closed files, Lua functions", function()
    write("10\n20\n30\n")
    local probe = io.lines(tmp, "*n")
    assert.is_nil(lines.reader(probe))
    close_file_of(probe)
    local it = io.lines(tmp, "*n")
    assert.are.same({ 20, 40, 60, n = 3 }, pool:map(function(x) return 2 * x end, it))
    close_file_of(it) -- (LuaJIT's io.lines with "*n" leaves its file open at the end)
    assert.is_nil(lines.reader(function() end))
    assert.is_nil(lines.reader(print))
    local g = assert(io.open(tmp))
    local closed = g:lines()
    g:close()
    assert.is_nil(lines.reader(closed))
    local ok, e = pcall(pool.map, pool, id, closed)
    assert.is_false(ok)
    assert.matches("closed file", tostring(e))
    -- starmap items must be argument tables: no blocks of lines for it
    local star_it = io.lines(tmp)
    local made = readers_during(function()
      assert.has_error(function() pool:starmap(id, star_it) end)
    end)
    close_file_of(star_it)
    assert.are.equal(0, made)
  end)

  it("names the line of a task error", function()
    write("a\nb\nboom\nd\n")
    local it = io.lines(tmp)
    local ok, e = pcall(pool.map, pool, function(s)
      if s == "boom" then error("bad line", 0) end
      return s
    end, it)
    close_file_of(it) -- (the map stopped before the end of the file)
    assert.is_false(ok)
    assert.are.equal(3, e.index)
    assert.matches("bad line", e.message)
  end)

  it("raises a read error of the file as the iterator would", function()
    -- a directory opens for reading and fails at the first read
    local dir = os.tmpname()
    os.remove(dir)
    assert(os.execute("mkdir " .. dir) == 0)
    local plain_it, it = io.lines(dir), io.lines(dir)
    local plain_ok, plain_err = pcall(function() for _ in plain_it do end end)
    local ok, e = pcall(pool.map, pool, id, it)
    close_file_of(plain_it)
    close_file_of(it)
    os.execute("rmdir " .. dir)
    assert.is_false(plain_ok)
    assert.is_false(ok)
    assert.matches("directory", tostring(e.message or e))
    assert.matches("directory", tostring(plain_err))
  end)

  it("sends a block again when its worker dies (max_retries)", function()
    local parts = {}
    for i = 1, 2000 do parts[i] = "line " .. i end
    write(table.concat(parts, "\n") .. "\n")
    local got = pool:map(function(s)
      if s == "line 777" then
        local f = io.open(marker, "r")
        if f then f:close() else
          io.open(marker, "w"):close()
          ffi.C.kill(ffi.C.getpid(), 9)
        end
      end
      return s
    end, io.lines(tmp), { max_retries = 1 })
    assert.are.equal(2000, got.n)
    for i = 1, 2000 do assert.are.equal("line " .. i, got[i]) end
    assert.is_truthy(io.open(marker, "r")):close()
  end)

  it("stops cleanly when the caller leaves an imap early", function()
    local parts = {}
    for i = 1, 5000 do parts[i] = tostring(i) end
    write(table.concat(parts, "\n") .. "\n")
    local g = assert(io.open(tmp))
    local n = 0
    local it = pool:imap(id, g:lines())
    for v, i in it do
      assert.are.equal(tostring(i), v)
      n = n + 1
      if n == 10 then break end
    end
    it:close()
    g:close()
    assert.are.same({ 2, n = 1 }, pool:map(function(x) return x + 1 end, { 1 }))
  end)
end)
