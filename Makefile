# forkpool's build.  This file is the one place that lists the C sources; both
# rockspecs build through it (build.type = "make": targets rock-build and
# rock-install), so the rock and the development build cannot drift apart.
# Every build writes only below build/.
#
#   make            build build/forkpool/core.so (warnings are errors, test hooks on)
#   make test       C unit tests + busted specs against the in-tree build
#   make ctest      C unit tests (ring, codec, packed, json), plain build
#   make ctest-san  the same under AddressSanitizer + UndefinedBehaviorSanitizer
#                   (both also run the host tests, tests/host: threads)
#   make asan       busted specs against an ASan build of the engine
#   make fuzz       run every fuzz target (tests/fuzz), FUZZ_SECONDS in all (clang)
#   make demo       the parallel-map demo (sequential vs parallel time)
#   make bench      benchmarks (QUICK=1: each workload once, small)
#   make rock       build/forkpool-$(VERSION)-1.src.rock, offline, from the checkout
#   make install    install the rock for LuaJIT into LuaRocks' default tree
#   make lib        build/libforkpool.a and build/libforkpool.so (the C API of
#                   include/forkpool.h, Lua modules compiled in; no test hooks)
#   make install-lib PREFIX=/usr/local [DESTDIR=]   the header, both libraries
#                   and lib/pkgconfig/forkpool.pc
#   make check-lib-symbols   the libraries export luaopen_forkpool,
#                   luaopen_forkpool_core and forkpool_* only
#   make host       examples/host built four ways into build/host/ (shared and
#                   static LuaJIT, forkpool linked in, the same under ASan);
#                   tools/test-host.sh runs them
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

SOURCES := engine/fp_common.c engine/fp_shm.c engine/fp_ring.c engine/fp_proc.c engine/fp_forkcheck.c engine/fp_sigint.c \
           engine/fp_codec.c engine/fp_packed.c engine/fp_reply.c engine/fp_worker.c engine/fp_events.c \
           engine/fp_json.c engine/fp_hotmem.c engine/fp_lua.c
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

.PHONY: all test ctest ctest-san spec asan fuzz demo bench bench-series rock install clean \
        rock-build rock-install check-symbols lib install-lib check-lib-symbols host

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

# ---- the library for hosts that embed LuaJIT (include/forkpool.h; README
# "Embedding").  The engine, engine/fp_embed.c (luaopen_forkpool,
# forkpool_preload) and every lua/forkpool/*.lua as source text in C
# (tools/embed-lua.lua, run by $(LUAJIT) at build time) in one archive and
# one shared library.  Neither links LuaJIT: the host does, once (one VM),
# so lua_* stay undefined here like in core.so.  No test hooks.
#
# The archive holds a single object, made with `ld -r` from all of them and
# then `objcopy --localize-hidden`: the engine's fp_* functions are global
# between its own files but hidden, and localizing them leaves only
# luaopen_forkpool, luaopen_forkpool_core and forkpool_* global, so a host's
# own fp_ring_init (a common prefix) can neither clash nor be called by
# mistake, exactly as with the shared library.
LIB_SONAME  := libforkpool.so.$(firstword $(subst ., ,$(VERSION)))
LIB_SO      := $(BUILD)/libforkpool.so.$(VERSION)
LIB_A       := $(BUILD)/libforkpool.a
LIB_GEN     := $(BUILD)/gen/fp_lua_modules.c
LIB_SRC     := $(SOURCES) engine/fp_embed.c $(LIB_GEN)
LIB_CFLAGS  := $(CSTD) $(OPT) $(WARN) -fPIC -fvisibility=hidden -DFORKPOOL_EXPORT \
               -Iinclude -Iengine -I$(LUA_INCDIR)
# The functions a host may call (include/forkpool.h), checked by
# check-lib-symbols: each present, and nothing exported outside
# luaopen_forkpool, luaopen_forkpool_core and forkpool_*.
LIB_EXPORTS := luaopen_forkpool luaopen_forkpool_core forkpool_preload forkpool_set_fork_hooks

# (lua/forkpool itself: its date changes when a module is added or removed)
$(LIB_GEN): $(LUA_MODULES) lua/forkpool tools/embed-lua.lua
	@mkdir -p $(dir $@)
	$(LUAJIT) tools/embed-lua.lua $@ $(LUA_MODULES)

# Compiled file by file (the generated file is large; this keeps errors
# readable), then joined and localized as said above.
$(BUILD)/lib/forkpool.o: $(LIB_SRC) $(HEADERS) include/forkpool.h Makefile
	@rm -rf $(BUILD)/lib/obj && mkdir -p $(BUILD)/lib/obj
	for f in $(LIB_SRC); do \
	  $(CC) $(LIB_CFLAGS) -c -o $(BUILD)/lib/obj/$$(basename $$f .c).o $$f || exit 1; done
	$(LD) -r -o $@.tmp $(BUILD)/lib/obj/*.o
	objcopy --localize-hidden $@.tmp $@ && rm -f $@.tmp

$(LIB_A): $(BUILD)/lib/forkpool.o
	rm -f $@ && ar rcs $@ $<

$(LIB_SO): $(BUILD)/lib/forkpool.o
	$(CC) -shared -Wl,-soname,$(LIB_SONAME) \
	  -o $@ $< -lpthread -lm -ldl
	ln -sf $(notdir $@) $(BUILD)/$(LIB_SONAME)
	ln -sf $(LIB_SONAME) $(BUILD)/libforkpool.so

lib: $(LIB_A) $(LIB_SO)

check-lib-symbols: lib
	@for f in $(LIB_A) $(LIB_SO); do \
	  case $$f in *.a) syms=$$(nm -g --defined-only $$f | awk 'NF == 3 {print $$3}');; \
	              *) syms=$$(nm -D --defined-only $$f | awk '{print $$3}');; esac; \
	  bad=$$(echo "$$syms" | grep -v '^luaopen_forkpool$$' | grep -v '^luaopen_forkpool_core$$' | grep -v '^forkpool_' || true); \
	  if [ -n "$$bad" ]; then echo "$$f exports more than luaopen_forkpool, luaopen_forkpool_core, forkpool_*:"; echo "$$bad"; exit 1; fi; \
	  for s in $(LIB_EXPORTS); do echo "$$syms" | grep -qx "$$s" || { echo "$$f does not export $$s"; exit 1; }; done; \
	  if strings $$f | grep -q '_set_worker_fault'; then echo "$$f carries the test hooks"; exit 1; fi; \
	  echo "$$f: exports $$(echo $$syms)"; \
	done
	@soname=$$(objdump -p $(LIB_SO) | awk '$$1 == "SONAME" {print $$2}'); \
	  [ "$$soname" = "$(LIB_SONAME)" ] || { echo "$(LIB_SO): SONAME '$$soname'"; exit 1; }; \
	  if objdump -p $(LIB_SO) | grep -q 'NEEDED.*luajit'; then echo "$(LIB_SO) links LuaJIT"; exit 1; fi; \
	  echo "$(LIB_SO): SONAME $$soname, does not link LuaJIT"

# make install-lib PREFIX=... [DESTDIR=...]: GNU-style directories, each
# overridable (libdir=/usr/lib/x86_64-linux-gnu).
PREFIX     ?= /usr/local
libdir     ?= $(PREFIX)/lib
includedir ?= $(PREFIX)/include

install-lib: lib
	install -d $(DESTDIR)$(includedir) $(DESTDIR)$(libdir)/pkgconfig
	install -m 644 include/forkpool.h $(DESTDIR)$(includedir)/forkpool.h
	install -m 644 $(LIB_A) $(DESTDIR)$(libdir)/libforkpool.a
	install -m 755 $(LIB_SO) $(DESTDIR)$(libdir)/$(notdir $(LIB_SO))
	ln -sf $(notdir $(LIB_SO)) $(DESTDIR)$(libdir)/$(LIB_SONAME)
	ln -sf $(LIB_SONAME) $(DESTDIR)$(libdir)/libforkpool.so
	sed -e 's|@PREFIX@|$(PREFIX)|' -e 's|@LIBDIR@|$(libdir)|' -e 's|@INCLUDEDIR@|$(includedir)|' \
	    -e 's|@VERSION@|$(VERSION)|' tools/forkpool.pc.in > $(DESTDIR)$(libdir)/pkgconfig/forkpool.pc

# ---- examples/host, built the ways a host links (examples/host/README.md).
# ASan: the library is rebuilt instrumented (build/host/asan/, a plain
# archive of the objects: it is only linked by the tests here), LuaJIT is
# Debian's (its own allocator, not instrumented: ASan and UBSan check the
# engine and the host).
LUAJIT_LIBDIR := $(shell pkg-config --variable=libdir luajit 2>/dev/null || echo /usr/lib/x86_64-linux-gnu)
HOST_CFLAGS   := $(CSTD) $(OPT) $(WARN) -I$(LUA_INCDIR)
HOST_SRC      := examples/host/host.c
HOSTS := $(addprefix $(BUILD)/host/,host-dynamic host-static-lj host-preload host-asan)

$(BUILD)/host/host-dynamic: $(HOST_SRC) Makefile
	@mkdir -p $(dir $@)
	$(CC) $(HOST_CFLAGS) -o $@ $< -lluajit-5.1 -lm

$(BUILD)/host/host-static-lj: $(HOST_SRC) Makefile
	@mkdir -p $(dir $@)
	$(CC) $(HOST_CFLAGS) -Wl,-E -o $@ $< $(LUAJIT_LIBDIR)/libluajit-5.1.a -lm -ldl

$(BUILD)/host/host-preload: $(HOST_SRC) $(LIB_A) include/forkpool.h Makefile
	@mkdir -p $(dir $@)
	$(CC) $(HOST_CFLAGS) -DHOST_PRELOAD -Iinclude -o $@ $< $(LIB_A) -lluajit-5.1 -lpthread -lm -ldl

$(BUILD)/host/asan/libforkpool.a: $(LIB_SRC) $(HEADERS) include/forkpool.h Makefile
	@rm -rf $(BUILD)/host/asan && mkdir -p $(BUILD)/host/asan/obj
	for f in $(LIB_SRC); do \
	  $(CC) $(LIB_CFLAGS) $(SAN) -c -o $(BUILD)/host/asan/obj/$$(basename $$f .c).o $$f || exit 1; done
	ar rcs $@ $(BUILD)/host/asan/obj/*.o

$(BUILD)/host/host-asan: $(HOST_SRC) $(BUILD)/host/asan/libforkpool.a include/forkpool.h Makefile
	$(CC) $(HOST_CFLAGS) $(SAN) -DHOST_PRELOAD -Iinclude -o $@ $< $(BUILD)/host/asan/libforkpool.a \
	  -lluajit-5.1 -lpthread -lm -ldl

# The C API's own tests (tests/host/test_embed.c), linked as a host links.
$(BUILD)/host/test_embed: tests/host/test_embed.c tests/c/fp_test.h $(LIB_A) include/forkpool.h Makefile
	@mkdir -p $(dir $@)
	$(CC) $(HOST_CFLAGS) -Iinclude -o $@ $< $(LIB_A) -lluajit-5.1 -lpthread -lm -ldl

$(BUILD)/host/test_embed-asan: tests/host/test_embed.c tests/c/fp_test.h $(BUILD)/host/asan/libforkpool.a include/forkpool.h Makefile
	$(CC) $(HOST_CFLAGS) $(SAN) -Iinclude -o $@ $< $(BUILD)/host/asan/libforkpool.a -lluajit-5.1 -lpthread -lm -ldl

host: all $(HOSTS) $(BUILD)/host/test_embed $(BUILD)/host/test_embed-asan

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

# ---- thread tests: each tests/host/test_threads_*.c is a program that embeds LuaJIT
# with threads of its own (a game engine, a server) and uses forkpool from
# it; the whole engine and the binding are compiled in (the C API
# forkpool_set_fork_hooks is called directly).  Run from the repository's
# root (they find lua/forkpool/ there); `make ctest` / `ctest-san` run them
# after the unit tests.
HOSTTESTS := $(patsubst tests/host/%.c,%,$(wildcard tests/host/test_threads_*.c))
HOST_FLAGS := $(CTEST_FLAGS) -Itests/host -Iinclude

# (the engine compiled once per flavour, shared by the host tests)
HOST_OBJS := $(patsubst engine/%.c,$(BUILD)/threads/obj/%.o,$(SOURCES))
HOST_SAN_OBJS := $(patsubst engine/%.c,$(BUILD)/threads-san/obj/%.o,$(SOURCES))

$(BUILD)/threads/obj/%.o: engine/%.c $(HEADERS) include/forkpool.h Makefile
	@mkdir -p $(dir $@)
	$(CC) $(HOST_FLAGS) -c -o $@ $<

$(BUILD)/threads-san/obj/%.o: engine/%.c $(HEADERS) include/forkpool.h Makefile
	@mkdir -p $(dir $@)
	$(CC) $(HOST_FLAGS) $(SAN) -c -o $@ $<

$(BUILD)/threads/%: tests/host/%.c $(HOST_OBJS) tests/host/host.h tests/c/fp_test.h include/forkpool.h
	@mkdir -p $(dir $@)
	$(CC) $(HOST_FLAGS) -o $@ $< $(HOST_OBJS) $(CTEST_LIBS)

$(BUILD)/threads-san/%: tests/host/%.c $(HOST_SAN_OBJS) tests/host/host.h tests/c/fp_test.h include/forkpool.h
	@mkdir -p $(dir $@)
	$(CC) $(HOST_FLAGS) $(SAN) -DFP_HOST_SAN -o $@ $< $(HOST_SAN_OBJS) $(CTEST_LIBS)

ctest: $(addprefix $(BUILD)/ctest/,$(CTESTS)) $(addprefix $(BUILD)/threads/,$(HOSTTESTS))
	@for t in $^; do echo "== $$t"; $$t || exit 1; done

ctest-san: $(addprefix $(BUILD)/ctest-san/,$(CTESTS)) $(addprefix $(BUILD)/threads-san/,$(HOSTTESTS))
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

# the records workload as a series of maps on one pool, each map apart
# (bench/series.lua; QUICK: 6 maps of 500 records, a smoke run)
bench-series: all
	LUA_CPATH="$(BUILD)/?.so;;" LUA_PATH="lua/?.lua;lua/?/init.lua;bench/?.lua;;" $(LUAJIT) bench/series.lua $(if $(QUICK),--maps 6 --records 500,)

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
