# forkpool development build.  The list of C sources lives in the rockspec
# (build.modules["forkpool.core"].sources); this file reads it from there.
#
#   make            build build/forkpool/core.so (warnings are errors)
#   make test       C unit tests + busted specs against the in-tree build
#   make ctest      C unit tests (ring, codec), plain build
#   make ctest-san  the same under AddressSanitizer + UndefinedBehaviorSanitizer
#   make asan       busted specs against an ASan build of the engine
#   make fuzz       run the decoder fuzz target for FUZZ_SECONDS (clang)
#   make demo       the parallel-map demo (sequential vs parallel time)
#   make bench      benchmarks (QUICK=1: each workload once, small)
#   make install    luarocks make (the way users install it)

LUAJIT   ?= luajit
CC       ?= gcc
ROCKSPEC := forkpool-scm-1.rockspec
LUA_INC  ?= /usr/include/luajit-2.1
BUILD    := build

SOURCES := $(shell $(LUAJIT) tools/rockspec-sources.lua $(ROCKSPEC))
ENGINE_NOBIND := $(filter-out engine/fp_lua.c engine/fp_worker.c,$(SOURCES))

WARN    := -Wall -Wextra -Werror -Wshadow -Wstrict-prototypes -Wmissing-prototypes \
           -Wpointer-arith -Wcast-align -Wundef -Wvla -Wformat=2
CSTD    := -std=c11 -D_GNU_SOURCE
OPT     ?= -O2 -g
CFLAGS_MOD := $(CSTD) $(OPT) $(WARN) -fPIC -fvisibility=hidden -Iengine -I$(LUA_INC)
SAN     := -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined

.PHONY: all test ctest ctest-san spec asan fuzz demo bench install clean check-sources

all: $(BUILD)/forkpool/core.so

$(BUILD)/forkpool/core.so: $(SOURCES) $(wildcard engine/*.h) $(ROCKSPEC)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS_MOD) -shared -o $@ $(SOURCES)

# ASan build of the module, loaded into luajit with LD_PRELOAD=libasan.
$(BUILD)/asan/forkpool/core.so: $(SOURCES) $(wildcard engine/*.h) $(ROCKSPEC)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS_MOD) $(SAN) -shared -o $@ $(SOURCES)

# ---- C unit tests: each tests/c/test_*.c is one executable linked with the
# engine files it needs and with libluajit (a test program embeds its own VM).
CTESTS := $(patsubst tests/c/%.c,%,$(wildcard tests/c/test_*.c))
CTEST_FLAGS := $(CSTD) -O1 -g $(WARN) -Iengine -Itests/c -I$(LUA_INC)
CTEST_LIBS  := -lluajit-5.1 -lm -lpthread

$(BUILD)/ctest/%: tests/c/%.c $(ENGINE_NOBIND) $(wildcard engine/*.h) tests/c/fp_test.h
	@mkdir -p $(dir $@)
	$(CC) $(CTEST_FLAGS) -o $@ $< $(ENGINE_NOBIND) $(CTEST_LIBS)

$(BUILD)/ctest-san/%: tests/c/%.c $(ENGINE_NOBIND) $(wildcard engine/*.h) tests/c/fp_test.h
	@mkdir -p $(dir $@)
	$(CC) $(CTEST_FLAGS) $(SAN) -o $@ $< $(ENGINE_NOBIND) $(CTEST_LIBS)

ctest: $(addprefix $(BUILD)/ctest/,$(CTESTS))
	@for t in $^; do echo "== $$t"; $$t || exit 1; done

ctest-san: $(addprefix $(BUILD)/ctest-san/,$(CTESTS))
	@for t in $^; do echo "== $$t"; ASAN_OPTIONS=detect_leaks=1 $$t || exit 1; done

# ---- busted specs against the in-tree build.
spec: all
	busted --lua=$(LUAJIT) spec

asan: $(BUILD)/asan/forkpool/core.so
	FORKPOOL_ASAN=1 FORKPOOL_CPATH=$(BUILD)/asan/?.so LD_PRELOAD=$$($(CC) -print-file-name=libasan.so) \
	ASAN_OPTIONS=detect_leaks=0:abort_on_error=0 busted --lua=$(LUAJIT) spec

test: all ctest spec

# ---- fuzzing the parent's decoder (clang + libFuzzer).
FUZZ_SECONDS ?= 60
$(BUILD)/fuzz/fuzz_decode: tests/fuzz/fuzz_decode.c $(ENGINE_NOBIND) $(wildcard engine/*.h)
	@mkdir -p $(dir $@)
	clang $(CSTD) -g -O1 -fsanitize=fuzzer,address,undefined -Iengine -I$(LUA_INC) \
	  -o $@ $< $(ENGINE_NOBIND) -lluajit-5.1 -lm

fuzz: $(BUILD)/fuzz/fuzz_decode
	@mkdir -p $(BUILD)/fuzz/corpus
	$< -max_total_time=$(FUZZ_SECONDS) -rss_limit_mb=2048 $(BUILD)/fuzz/corpus tests/fuzz/corpus

demo: all
	LUA_CPATH="$(BUILD)/?.so;;" LUA_PATH="lua/?.lua;lua/?/init.lua;;" $(LUAJIT) examples/demo.lua

bench: all
	LUA_CPATH="$(BUILD)/?.so;;" LUA_PATH="lua/?.lua;lua/?/init.lua;bench/?.lua;;" $(LUAJIT) bench/run.lua $(if $(QUICK),--quick,)

install:
	luarocks make $(ROCKSPEC) LUA_INCDIR=$(LUA_INC) CFLAGS="$(CSTD) -O2 -fPIC -fvisibility=hidden $(WARN)"

clean:
	rm -rf $(BUILD)
