# dsv32: plain Makefile.
#   make            build/libdsv32.a and build/dsv32
#   make test       build and run every test; ends with "N passed, N failed"
#   make asan       the tests under AddressSanitizer + UBSan, clang (in build-asan/)
#   make fuzz       every libFuzzer target for FUZZ_SECONDS (in build-fuzz/)
#   make CC=clang   any C11 compiler with GNU extensions (gcc, clang)
#   make MPI=1      with Open MPI (model parallelism across processes: mpirun
#                   -np N build/dsv32 ...); MPI=0 without; by default on when
#                   Open MPI's mpicc is installed
#
# Kernel files named src/*/*_<isa>.c are compiled with that ISA's flags; which
# variant runs is chosen at run time from CPU features, so the binary runs on
# any x86-64 (and the generic code everywhere else).

CC      ?= cc
BUILD   ?= build
OPT     ?= -O2
CFLAGS  ?= $(OPT) -g
WARN     = -Wall -Wextra -Werror
# No contraction of a*b+c into fma: the scalar reference must round exactly as
# written, the same under gcc and clang. SIMD kernels use fma explicitly.
XCFLAGS  = -ffp-contract=off
CPPFLAGS += -std=c11 -D_GNU_SOURCE -Iinclude -MMD -MP
LDLIBS  += -lpcre2-8 -lcjson -lmicrohttpd -lpthread -lm

SRC      := $(wildcard src/*/*.c)

# The transport between ranks: Open MPI (src/dist/comm_mpi.c) or none
# (src/dist/comm_local.c). Flags come from Open MPI's wrapper compiler, whichever
# compiler builds the rest.
MPI ?= $(if $(shell command -v mpicc 2>/dev/null),1,0)
ifeq ($(MPI),1)
MPI_CFLAGS := $(shell mpicc --showme:compile)
LDLIBS     += $(shell mpicc --showme:link)
SRC        := $(filter-out src/dist/comm_local.c,$(SRC))
else
SRC        := $(filter-out src/dist/comm_mpi.c,$(SRC))
endif
TOOL_SRC := $(wildcard tools/*.c)
TEST_SRC := $(wildcard tests/*.c)

OBJ      := $(SRC:%.c=$(BUILD)/%.o)
TOOL_OBJ := $(TOOL_SRC:%.c=$(BUILD)/%.o)
TEST_OBJ := $(TEST_SRC:%.c=$(BUILD)/%.o)

ARCH := $(shell $(CC) -dumpmachine)
ifneq (,$(findstring x86_64,$(ARCH)))
ISA_avx2   = -mavx2 -mfma -mf16c
ISA_avx512 = -mavx512f -mavx512bw -mavx512dq -mavx512vl -mavx512bf16 -mavx512vnni -mfma -mf16c
ISA_amx    = $(ISA_avx512) -mavx512vbmi -mamx-tile -mamx-bf16 -mamx-int8
else
# Non-x86 builds keep only the generic kernels.
SRC := $(filter-out %_avx2.c %_avx512.c %_amx.c,$(SRC))
OBJ := $(SRC:%.c=$(BUILD)/%.o)
endif

# The public headers are the only door: the commands see include/ alone;
# the library and the tests see src/ too. The library exports only what
# include/ marks DSV_API (every such name starts with dsv_; `make test` runs
# tools/check-symbols.sh over its objects).
$(OBJ) $(TEST_OBJ): CPPFLAGS += -Isrc
$(OBJ): XCFLAGS += -fvisibility=hidden

.PHONY: all test asan clean bench check-layers check-cycles soak kbench
all: $(BUILD)/libdsv32.a $(BUILD)/dsv32

# Flags live here, and an object built with other flags (say, before the
# library was hidden) must not survive an edit of them.
$(OBJ) $(TOOL_OBJ) $(TEST_OBJ): Makefile

$(BUILD)/%_avx2.o: %_avx2.c
	@mkdir -p $(dir $@)
	$(CC) $(CPPFLAGS) $(CFLAGS) $(XCFLAGS) $(WARN) $(ISA_avx2) -c $< -o $@
$(BUILD)/%_avx512.o: %_avx512.c
	@mkdir -p $(dir $@)
	$(CC) $(CPPFLAGS) $(CFLAGS) $(XCFLAGS) $(WARN) $(ISA_avx512) -c $< -o $@
$(BUILD)/%_amx.o: %_amx.c
	@mkdir -p $(dir $@)
	$(CC) $(CPPFLAGS) $(CFLAGS) $(XCFLAGS) $(WARN) $(ISA_amx) -c $< -o $@
$(BUILD)/%.o: %.c
	@mkdir -p $(dir $@)
	$(CC) $(CPPFLAGS) $(CFLAGS) $(XCFLAGS) $(WARN) -c $< -o $@
$(BUILD)/src/dist/comm_mpi.o: src/dist/comm_mpi.c
	@mkdir -p $(dir $@)
	$(CC) $(CPPFLAGS) $(MPI_CFLAGS) $(CFLAGS) $(XCFLAGS) $(WARN) -c $< -o $@

# The library's contents change with MPI=0/1: a stamp per setting makes the
# archive (and so every binary) rebuild when it flips.
$(BUILD)/.mpi-$(MPI):
	@mkdir -p $(dir $@)
	@rm -f $(BUILD)/.mpi-*
	@touch $@

# The chat page is embedded with .incbin, which the compiler's dependency
# files do not see.
$(BUILD)/src/server/page.o: src/server/chat.html

$(BUILD)/libdsv32.a: $(OBJ) $(BUILD)/.mpi-$(MPI)
	@rm -f $@
	ar rcs $@ $(filter %.o,$^)

$(BUILD)/dsv32: $(TOOL_OBJ) $(BUILD)/libdsv32.a
	$(CC) $(CFLAGS) $(LDFLAGS) -o $@ $(TOOL_OBJ) $(BUILD)/libdsv32.a $(LDLIBS)

$(BUILD)/run_tests: $(TEST_OBJ) $(BUILD)/libdsv32.a
	$(CC) $(CFLAGS) $(LDFLAGS) -o $@ $(TEST_OBJ) $(BUILD)/libdsv32.a $(LDLIBS)

# The test build of the binary: build/dsv32 plus tests/hooks/ (a server hook
# that makes a chat request get a chosen completion). Never installed.
HOOK_OBJ = $(BUILD)/tests/hooks/forced_completion.o
$(BUILD)/dsv32-test: $(TOOL_OBJ) $(HOOK_OBJ) $(BUILD)/libdsv32.a
	$(CC) $(CFLAGS) $(LDFLAGS) -o $@ $(TOOL_OBJ) $(HOOK_OBJ) $(BUILD)/libdsv32.a $(LDLIBS)

# Tests that drive the command line find the binary through DSV32_BIN (and
# the test build through DSV32_TEST_BIN). The structure checks run first; a
# violation fails the tests.
test: $(BUILD)/run_tests $(BUILD)/dsv32 $(BUILD)/dsv32-test
	@tools/check-symbols.sh $(OBJ)
	@tools/check-layers.sh
	@tools/check-cycles.sh $(OBJ)
	DSV32_BIN=$(BUILD)/dsv32 DSV32_TEST_BIN=$(BUILD)/dsv32-test $(BUILD)/run_tests $(T)

# The soak and fault test of the server (tests/server/soak.js): concurrent
# streaming clients on the embedded model, disconnects, bad requests, a 64 MB
# body; KV pages back to zero, RSS of round 2 against round 1. About half a
# minute; SOAK_LONG=1 for the long run (and the RSS bound asserted).
soak: $(BUILD)/dsv32
	node tests/server/soak.js $(BUILD)/dsv32 models/tiny

# The folders of src/ are layers; no file includes a higher one.
check-layers:
	tools/check-layers.sh

# No two files of the library call or include each other in a loop.
check-cycles: $(OBJ)
	tools/check-cycles.sh $(OBJ)

# The whole suite under AddressSanitizer and UBSan, built with clang: gcc's
# UBSan misses float-to-int casts of out-of-range doubles. Any finding stops
# the test that hit it (-fno-sanitize-recover).
ASAN_FLAGS = -fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer
asan:
	$(MAKE) CC=clang BUILD=build-asan OPT="-O1" CFLAGS="-O1 -g $(ASAN_FLAGS)" \
	    LDFLAGS="-fsanitize=address,undefined" test

# The standard benchmark set (tools/bench.sh, about 3 minutes on 2 cores):
# prints a table, writes docs/bench.md and docs/bench-decode.png. Not part of
# test. Token counts and depths: BENCH_* variables, see tools/bench.sh. With
# LLAMA_BENCH=/path/to/llama-bench and LLAMA_GGUF_BF16=, LLAMA_GGUF_Q8_0= or
# LLAMA_GGUF_Q4_K_M= (GGUF files of the bench-small shape) it also times
# llama.cpp beside dsv32 on the same files (LLAMA_* variables; BENCH_STANDARD=0
# runs only that comparison).
bench: $(BUILD)/dsv32
	BUILD=$(BUILD) tools/bench.sh

# Single-kernel timings, levels alternated in one process (bench/kbench.c;
# `build/kbench --help`). Not part of test.
kbench: $(BUILD)/kbench
$(BUILD)/kbench: bench/kbench.c $(BUILD)/tools/roofline.o $(BUILD)/libdsv32.a
	$(CC) $(CPPFLAGS) -Isrc -Itools $(CFLAGS) $(XCFLAGS) $(WARN) $(LDFLAGS) -o $@ $< $(BUILD)/tools/roofline.o $(BUILD)/libdsv32.a $(LDLIBS)

# libFuzzer targets (clang), one per parser of outside input: the target
# NAME is tests/fuzz/fuzz_NAME.c, its seeds tests/fuzz/seeds/NAME/, inputs
# that once crashed it tests/data/fuzz/NAME/ (replayed first). To add one,
# write the file and add NAME here. `make fuzz` runs each for FUZZ_SECONDS
# under ASan+UBSan (tools/fuzz.sh); `make fuzz-build` only builds them.
FUZZ_TARGETS = safetensors config tokenizer chat_render chat_parse server_api gguf dsml server_tokenize
FUZZ_SECONDS ?= 30
FUZZ_CFLAGS  = -O1 -g $(ASAN_FLAGS)
FUZZ_LDLIBS  = -lpcre2-8 -lcjson -lmicrohttpd -lpthread -lm
FUZZ_BIN     = $(FUZZ_TARGETS:%=build-fuzz/fuzz_%)

.PHONY: fuzz fuzz-build fuzz-always
fuzz: fuzz-build
	FUZZ_SECONDS=$(FUZZ_SECONDS) tools/fuzz.sh $(FUZZ_TARGETS)
fuzz-build: $(FUZZ_BIN)
# The library with coverage instrumentation (no MPI: no parser needs it),
# brought up to date by its own make every time; a recipe (not just a
# prerequisite) so that the targets see its new time and relink.
ifneq ($(BUILD),build-fuzz)
build-fuzz/libdsv32.a: fuzz-always
	$(MAKE) CC=clang BUILD=build-fuzz MPI=0 OPT=-O1 CFLAGS="$(FUZZ_CFLAGS) -fsanitize=fuzzer-no-link" \
	    build-fuzz/libdsv32.a
endif
# The fuzz targets parse input; none of them runs a SIMD kernel, and `make
# asan` runs every kernel under both sanitizers. Instrumented, the kernel
# files take minutes each to compile (30x their plain time), so the fuzz
# build compiles them plain.
ifeq ($(BUILD),build-fuzz)
$(BUILD)/%_avx2.o $(BUILD)/%_avx512.o $(BUILD)/%_amx.o: override CFLAGS = -O1 -g
endif
build-fuzz/fuzz_%: tests/fuzz/fuzz_%.c tests/fuzz/fuzz.h build-fuzz/libdsv32.a
	clang -std=c11 -D_GNU_SOURCE -Iinclude -Isrc $(FUZZ_CFLAGS) -fsanitize=fuzzer $(WARN) $< build-fuzz/libdsv32.a -o $@ $(FUZZ_LDLIBS)

clean:
	rm -rf build build-asan build-fuzz

-include $(OBJ:.o=.d) $(TOOL_OBJ:.o=.d) $(TEST_OBJ:.o=.d) $(HOOK_OBJ:.o=.d)

# The embedded tiny model (models/tiny), end to end: corpus from Debian's
# bible-kjv (installed with apt when missing), BPE, the three training stages,
# export and the bf16/fp8 choice. See models/recipe/tiny.sh and the README.
.PHONY: tiny-model
tiny-model: $(BUILD)/dsv32
	DSV32=$(BUILD)/dsv32 WORK=$(BUILD)/tiny sh models/recipe/tiny.sh all
