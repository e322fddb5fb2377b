# forkpool's build.  This file is the one place that lists the C sources; both
# rockspecs build through it (build.type = "make": targets rock-build and
# rock-install), so the rock and the development build cannot drift apart.
# Every build writes only below build/.
#
#   make            build build/forkpool/core.so (warnings are errors, test hooks on)
#   make test       C unit tests + busted specs against the in-tree build
#   make ctest      C unit tests (ring, codec), plain build
#   make ctest-san  the same under AddressSanitizer + UndefinedBehaviorSanitizer
#                   (both also run the host tests, tests/host: threads)
#   make asan       busted specs against an ASan build of the engine
#   make fuzz       run every fuzz target (tests/fuzz), FUZZ_SECONDS in all (clang)
#   make demo       the parallel-map demo (sequential vs parallel time)
#   make bench      benchmarks (QUICK=1: each workload once, small)
#   make rock       build/forkpool-$(VERSION)-1.src.rock, offline, from the checkout
#   make install    install the rock for LuaJIT into LuaRocks' default tree
#   make clean      remove build/

LUAJIT   ?= luajit
CC       ?= gcc
VERSION  := 0.1.0
ROCKSPEC := forkpool-scm-1.rockspec
RELEASE_ROCKSPEC := forkpool-$(VERSION)-1.rockspec
BUILD    := build

# LuaJIT's headers (never PUC Lua's: engine/fp_luajit.h stops the build with
# the fix when they are not LuaJIT's).  LuaRocks passes its own LUA_INCDIR.
LUA_INCDIR ?= $(shell pkg-config --variable=includedir luajit 2>/dev/null || echo /usr/include/luajit-2.1)

SOURCES := engine/fp_common.c engine/fp_shm.c engine/fp_ring.c engine/fp_proc.c \
           engine/fp_codec.c engine/fp_packed.c engine/fp_reply.c engine/fp_worker.c engine/fp_events.c \
           engine/fp_lua.c
HEADERS := $(wildcard engine/*.h)
LUA_MODULES := $(wildcard lua/forkpool/*.lua)
ENGINE_NOBIND := $(filter-out engine/fp_lua.c engine/fp_worker.c,$(SOURCES))

WARN    := -Wall -Wextra -Werror -Wshadow -Wstrict-prototypes -Wmissing-prototypes \
           -Wpointer-arith -Wcast-align -Wundef -Wvla -Wformat=2
CSTD    := -std=c11 -D_GNU_SOURCE
OPT     ?= -O2 -g
# Development builds carry the fault-injection hooks the specs use
# (core._set_worker_fault, core._fail_fork_after); a rock does not.
TEST_HOOKS := -DFP_TEST_HOOKS
CFLAGS_MOD := $(CSTD) $(OPT) $(WARN) $(TEST_HOOKS) -fPIC -fvisibility=hidden -Iengine -I$(LUA_INCDIR)
SAN     := -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined

.PHONY: all test ctest ctest-san spec asan fuzz demo bench rock install clean \
        rock-build rock-install check-symbols

all: $(BUILD)/forkpool/core.so

$(BUILD)/forkpool/core.so: $(SOURCES) $(HEADERS) Makefile
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS_MOD) -shared -o $@ $(SOURCES)

# ASan build of the module, loaded into luajit with LD_PRELOAD=libasan.
$(BUILD)/asan/forkpool/core.so: $(SOURCES) $(HEADERS) Makefile
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS_MOD) $(SAN) -shared -o $@ $(SOURCES)

# ---- the rock's build (LuaRocks runs these with its own CFLAGS, LIBFLAG,
# LUA_INCDIR and INST_* variables; see the rockspecs).  No -Werror here: a
# user's newer compiler may warn about something new, and must still build.
ROCK_CFLAGS ?= -O2 -fPIC
LIBFLAG     ?= -shared
ROCK_SO     := $(BUILD)/rock/forkpool/core.so

rock-build: $(ROCK_SO)

$(ROCK_SO): $(SOURCES) $(HEADERS) Makefile
	@mkdir -p $(dir $@)
	$(CC) $(ROCK_CFLAGS) $(CSTD) -Wall -Wextra -Iengine -I$(LUA_INCDIR) $(LIBFLAG) -o $@ $(SOURCES)

rock-install: $(ROCK_SO)
	@test -n "$(INST_LIBDIR)" -a -n "$(INST_LUADIR)" || { echo "rock-install: INST_LIBDIR and INST_LUADIR are set by LuaRocks" >&2; exit 2; }
	mkdir -p $(INST_LIBDIR)/forkpool $(INST_LUADIR)/forkpool
	cp $(ROCK_SO) $(INST_LIBDIR)/forkpool/core.so
	cp lua/forkpool/init.lua $(INST_LUADIR)/forkpool.lua
	for f in $(filter-out lua/forkpool/init.lua,$(LUA_MODULES)); do cp $$f $(INST_LUADIR)/forkpool/; done

# Only luaopen_* may be exported, however the module is built: the engine
# sets hidden visibility in its headers, so even a build without
# -fvisibility=hidden (a host's own, LuaRocks' defaults) exports nothing else.
check-symbols: $(BUILD)/forkpool/core.so $(ROCK_SO)
	@for so in $^; do \
	  bad=$$(nm -D --defined-only $$so | awk '{print $$3}' | grep -v '^luaopen_' || true); \
	  if [ -n "$$bad" ]; then echo "$$so exports more than luaopen_*:"; echo "$$bad"; exit 1; fi; \
	  if nm -D --defined-only $$so | grep -q '_set_worker_fault\|fail_fork' ; then echo "$$so: test hooks"; exit 1; fi; \
	  echo "$$so: exports $$(nm -D --defined-only $$so | awk '{print $$3}' | tr '\n' ' ')"; \
	done
	@if strings $(ROCK_SO) | grep -q '_set_worker_fault'; then echo "$(ROCK_SO) carries the test hooks"; exit 1; fi

# ---- C unit tests: each tests/c/test_*.c is one executable linked with the
# engine files it needs and with libluajit (a test program embeds its own VM).
CTESTS := $(patsubst tests/c/%.c,%,$(wildcard tests/c/test_*.c))
CTEST_FLAGS := $(CSTD) -O1 -g $(WARN) -Iengine -Itests/c -I$(LUA_INCDIR)
CTEST_LIBS  := -lluajit-5.1 -lm -lpthread

$(BUILD)/ctest/%: tests/c/%.c $(ENGINE_NOBIND) $(HEADERS) tests/c/fp_test.h
	@mkdir -p $(dir $@)
	$(CC) $(CTEST_FLAGS) -o $@ $< $(ENGINE_NOBIND) $(CTEST_LIBS)

$(BUILD)/ctest-san/%: tests/c/%.c $(ENGINE_NOBIND) $(HEADERS) tests/c/fp_test.h
	@mkdir -p $(dir $@)
	$(CC) $(CTEST_FLAGS) $(SAN) -o $@ $< $(ENGINE_NOBIND) $(CTEST_LIBS)

# ---- host tests: each tests/host/test_*.c is a program that embeds LuaJIT
# with threads of its own (a game engine, a server) and uses forkpool from
# it; the whole engine and the binding are compiled in (the C API
# forkpool_set_fork_hooks is called directly).  Run from the repository's
# root (they find lua/forkpool/ there); `make ctest` / `ctest-san` run them
# after the unit tests.
HOSTTESTS := $(patsubst tests/host/%.c,%,$(wildcard tests/host/test_*.c))
HOST_FLAGS := $(CTEST_FLAGS) -Itests/host -Iinclude

# (the engine compiled once per flavour, shared by the host tests)
HOST_OBJS := $(patsubst engine/%.c,$(BUILD)/host/obj/%.o,$(SOURCES))
HOST_SAN_OBJS := $(patsubst engine/%.c,$(BUILD)/host-san/obj/%.o,$(SOURCES))

$(BUILD)/host/obj/%.o: engine/%.c $(HEADERS) include/forkpool.h Makefile
	@mkdir -p $(dir $@)
	$(CC) $(HOST_FLAGS) -c -o $@ $<

$(BUILD)/host-san/obj/%.o: engine/%.c $(HEADERS) include/forkpool.h Makefile
	@mkdir -p $(dir $@)
	$(CC) $(HOST_FLAGS) $(SAN) -c -o $@ $<

$(BUILD)/host/%: tests/host/%.c $(HOST_OBJS) tests/host/host.h tests/c/fp_test.h include/forkpool.h
	@mkdir -p $(dir $@)
	$(CC) $(HOST_FLAGS) -o $@ $< $(HOST_OBJS) $(CTEST_LIBS)

$(BUILD)/host-san/%: tests/host/%.c $(HOST_SAN_OBJS) tests/host/host.h tests/c/fp_test.h include/forkpool.h
	@mkdir -p $(dir $@)
	$(CC) $(HOST_FLAGS) $(SAN) -DFP_HOST_SAN -o $@ $< $(HOST_SAN_OBJS) $(CTEST_LIBS)

ctest: $(addprefix $(BUILD)/ctest/,$(CTESTS)) $(addprefix $(BUILD)/host/,$(HOSTTESTS))
	@for t in $^; do echo "== $$t"; $$t || exit 1; done

ctest-san: $(addprefix $(BUILD)/ctest-san/,$(CTESTS)) $(addprefix $(BUILD)/host-san/,$(HOSTTESTS))
	@for t in $^; do echo "== $$t"; ASAN_OPTIONS=detect_leaks=1 $$t || exit 1; done

# ---- busted specs against the in-tree build.
spec: all
	busted --lua=$(LUAJIT) spec

asan: $(BUILD)/asan/forkpool/core.so
	FORKPOOL_ASAN=1 FORKPOOL_CPATH=$(BUILD)/asan/?.so LD_PRELOAD=$$($(CC) -print-file-name=libasan.so) \
	ASAN_OPTIONS=detect_leaks=0:abort_on_error=0 busted --lua=$(LUAJIT) spec

test: all ctest spec

# ---- fuzzing what the parent decodes (clang + libFuzzer): each
# tests/fuzz/fuzz_*.c is one target, seeded from tests/fuzz/seeds-<name>
# (fuzz_decode: tests/fuzz/corpus); `make fuzz` runs them all, splitting
# FUZZ_SECONDS between them (FUZZ=name runs one).
FUZZ_SECONDS ?= 60
FUZZERS := $(patsubst tests/fuzz/%.c,%,$(wildcard tests/fuzz/fuzz_*.c))
FUZZ    ?= $(FUZZERS)
$(BUILD)/fuzz/fuzz_%: tests/fuzz/fuzz_%.c $(ENGINE_NOBIND) $(HEADERS)
	@mkdir -p $(dir $@)
	clang $(CSTD) -g -O1 -fsanitize=fuzzer,address,undefined -Iengine -I$(LUA_INCDIR) \
	  -o $@ $< $(ENGINE_NOBIND) -lluajit-5.1 -lm

fuzz: $(addprefix $(BUILD)/fuzz/,$(FUZZ))
	@n=$(words $(FUZZ)); secs=$$(( $(FUZZ_SECONDS) / n )); [ $$secs -ge 1 ] || secs=1; \
	for f in $(FUZZ); do \
	  mkdir -p $(BUILD)/fuzz/corpus-$$f; \
	  seeds=tests/fuzz/seeds-$${f#fuzz_}; [ "$$f" = fuzz_decode ] && seeds=tests/fuzz/corpus; \
	  [ -d $$seeds ] || seeds=; \
	  echo "== $$f ($$secs s)"; \
	  if $(BUILD)/fuzz/$$f -max_total_time=$$secs -rss_limit_mb=2048 -print_final_stats=1 \
	       $(BUILD)/fuzz/corpus-$$f $$seeds > $(BUILD)/fuzz/$$f.log 2>&1; then \
	    grep -E "^Done|stat::number_of_executed_units" $(BUILD)/fuzz/$$f.log; \
	  else tail -40 $(BUILD)/fuzz/$$f.log; exit 1; fi; \
	done

demo: all
	LUA_CPATH="$(BUILD)/?.so;;" LUA_PATH="lua/?.lua;lua/?/init.lua;;" $(LUAJIT) examples/demo.lua

bench: all
	LUA_CPATH="$(BUILD)/?.so;;" LUA_PATH="lua/?.lua;lua/?/init.lua;bench/?.lua;;" $(LUAJIT) bench/run.lua $(if $(QUICK),--quick,)

# ---- the source rock, offline: the release rockspec plus the checkout's
# tracked files (as they are in the work tree) under forkpool/, the directory
# LuaRocks unpacks a git source into.
ROCK := $(BUILD)/forkpool-$(VERSION)-1.src.rock
# (always remade: which files are tracked is not a file date make can see)
rock:
	rm -rf $(BUILD)/srcrock && mkdir -p $(BUILD)/srcrock/forkpool
	git ls-files -z | xargs -0 tar cf - | tar xf - -C $(BUILD)/srcrock/forkpool
	cp $(RELEASE_ROCKSPEC) $(BUILD)/srcrock/
	rm -f $(ROCK) && cd $(BUILD)/srcrock && zip -qr ../$(notdir $(ROCK)) $(RELEASE_ROCKSPEC) forkpool
	@echo "built $(ROCK)"

# LuaRocks for LuaJIT whatever its default Lua version is (Debian's picks the
# newest Lua installed): tools/luarocks-luajit.sh passes --lua-version=5.1,
# the luajit interpreter and LuaJIT's headers.
install:
	tools/luarocks-luajit.sh make $(ROCKSPEC)

clean:
	rm -rf $(BUILD)
