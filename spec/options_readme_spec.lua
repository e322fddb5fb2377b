-- README's option reference names every option the checker accepts
-- (lua/forkpool/options.lua is the one schema): a new option cannot ship
-- undocumented.
local options = require "forkpool.options"

local function readme()
  local f = assert(io.open("README.md"))
  local s = f:read("*a")
  f:close()
  return s
end

describe("README's option reference", function()
  local text = readme()

  it("has a row in the forkpool.new table for every pool option", function()
    local at = assert(text:find("### `forkpool.new(options) -> pool`", 1, true))
    local stop = assert(text:find("\n### ", at + 1, true))
    local section = text:sub(at, stop)
    for k in pairs(options.POOL) do
      assert.truthy(section:find("| `" .. k .. "` |", 1, true), "pool option " .. k)
    end
  end)

  it("names every call option and progress bar option", function()
    for _, schema in ipairs({ "RUN", "MAP", "ASYNC", "PROGRESS" }) do
      for k in pairs(options[schema]) do
        assert.truthy(text:find("`" .. k .. "`", 1, true) or text:find(k .. " =", 1, true),
          schema .. " option " .. k)
      end
    end
  end)
end)
