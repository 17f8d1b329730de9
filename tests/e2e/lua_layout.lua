-- tests/e2e/lua_layout.lua LAYOUT KEYMESH_LUA - the LuaJIT binding's ffi.cdef
-- structs against the C compiler's layout (the file tests/e2e/layout.c
-- prints: "struct size field offset ...").  Loading the module runs its
-- cdef; libkeymesh itself is not loaded.  TAP: one test per struct the
-- binding declares (its size and every field's offset), and one that every
-- struct it declares is in LAYOUT, so none goes unchecked.
local ffi = require "ffi"
local layout_path, module_path = arg[1], arg[2]

local n, failed = 0, 0
local function ok(cond, name, diags)
    n = n + 1
    print((cond and "ok " or "not ok ") .. n .. " - " .. name)
    if not cond then
        failed = failed + 1
        for _, d in ipairs(diags or {}) do print("# " .. d) end
    end
end

-- The C side.
local c, order = {}, {}
for line in io.lines(layout_path) do
    local w = {}
    for t in line:gmatch("%S+") do w[#w + 1] = t end
    if #w > 0 then
        local s = { size = tonumber(w[2]), fields = {} }
        for i = 3, #w, 2 do s.fields[#s.fields + 1] = { w[i], tonumber(w[i + 1]) } end
        c[w[1]] = s
        order[#order + 1] = w[1]
    end
end

-- The binding: its source names the structs; loading it declares them.
local src = assert(io.open(module_path)):read("*a")
local declared = {}
for name in src:gmatch("typedef%s+struct%s+(km_[%w_]+)%s*{") do declared[#declared + 1] = name end
package.path = module_path:gsub("[^/]*$", "?.lua") .. ";" .. package.path
dofile(module_path)

for _, name in ipairs(declared) do
    local s, bad = c[name], {}
    if s then
        local size = ffi.sizeof(name)
        if size ~= s.size then bad[#bad + 1] = ("sizeof %d, C %d"):format(size, s.size) end
        for _, f in ipairs(s.fields) do
            local off = ffi.offsetof(name, f[1])
            if off ~= f[2] then
                bad[#bad + 1] = ("%s: offset %s, C %d"):format(f[1], tostring(off), f[2])
            end
        end
        ok(#bad == 0, ("%s: size %d and %d field offsets as in C"):format(name, s.size, #s.fields), bad)
    end
end
local missing = {}
for _, name in ipairs(declared) do
    if not c[name] then missing[#missing + 1] = name .. " is declared by the binding, not printed by layout.c" end
end
ok(#declared > 0 and #missing == 0,
   ("every struct of the cdef (%d) is checked (layout.c prints %d)"):format(#declared, #order), missing)
print("1.." .. n)
os.exit(failed == 0 and 0 or 1)
