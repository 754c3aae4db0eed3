/*
** lua_fuzz.c -- libFuzzer driver for the targets written in Lua
** (tests/fuzz/targets.lua): the YAML and JSON decoders, kubeconfig loading,
** label and field selectors, merge / strategic / JSON patch, quantities and
** the API server's request handler.
**
** One runtime for the whole run, opened through the public API
** (vmsnap.h) like any embedder.  Each input is passed base64-encoded to
** fuzz_targets.run(target, input); a raise there is an invariant broken, and
** abort() makes libFuzzer keep the input.  The target is chosen by the
** environment: VMSNAP_FUZZ_TARGET (yaml, json, ...) and VMSNAP_FUZZ_TARGETS
** (the path of targets.lua).  Built and run by tests/fuzz/run.sh.
*/
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "vmsnap.h"

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static vmsnap_runtime *rt;
static const char *target;
static char *json;
static size_t json_cap;

static void quiet(void *ud, int level, const char *subsystem, const char *message)
{
	(void)ud;
	(void)subsystem;
	if (level >= VMSNAP_LOG_ERROR)
		fprintf(stderr, "vmsnap: %s\n", message);
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
	const char *file = getenv("VMSNAP_FUZZ_TARGETS");
	vmsnap_config *cfg;
	char *res = NULL;
	char args[128];
	(void)argc;
	(void)argv;
	target = getenv("VMSNAP_FUZZ_TARGET");
	if (!target || !file || strlen(target) > 64) {
		fprintf(stderr, "lua_fuzz: set VMSNAP_FUZZ_TARGET and VMSNAP_FUZZ_TARGETS\n");
		exit(2);
	}
	cfg = vmsnap_config_new();
	vmsnap_config_set_log(cfg, quiet, NULL, VMSNAP_LOG_ERROR);
	vmsnap_config_set_memory_limit(cfg, (size_t)1 << 30);
	vmsnap_config_set_cancel_grace(cfg, 1.0);
	if (vmsnap_open(cfg, &rt) != VMSNAP_OK) {
		fprintf(stderr, "lua_fuzz: open: %s\n", rt ? vmsnap_errmsg(rt) : "?");
		exit(2);
	}
	vmsnap_config_free(cfg);
	if (vmsnap_run_file(rt, file) != VMSNAP_OK) {
		fprintf(stderr, "lua_fuzz: %s: %s\n", file, vmsnap_errmsg(rt));
		exit(2);
	}
	/* the target exists: an empty input runs it once */
	snprintf(args, sizeof args, "[\"%s\", \"\"]", target);
	if (vmsnap_call(rt, "fuzz_targets.run", args, &res) != VMSNAP_OK) {
		fprintf(stderr, "lua_fuzz: %s\n", vmsnap_errmsg(rt));
		exit(2);
	}
	vmsnap_free(res);
	return 0;
}

static const char B64[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	size_t need = 16 + strlen(target) + 4 * (size / 3 + 1) + 8, i, o;
	char *res = NULL;
	vmsnap_status st;
	if (need > json_cap) {
		char *p = realloc(json, need);
		if (!p)
			abort();
		json = p;
		json_cap = need;
	}
	o = (size_t)snprintf(json, json_cap, "[\"%s\",\"", target);
	for (i = 0; i + 2 < size; i += 3) {
		unsigned v = (unsigned)data[i] << 16 | (unsigned)data[i + 1] << 8 | data[i + 2];
		json[o++] = B64[v >> 18 & 63];
		json[o++] = B64[v >> 12 & 63];
		json[o++] = B64[v >> 6 & 63];
		json[o++] = B64[v & 63];
	}
	if (size - i == 1) {
		unsigned v = (unsigned)data[i] << 16;
		json[o++] = B64[v >> 18 & 63];
		json[o++] = B64[v >> 12 & 63];
		json[o++] = '=';
		json[o++] = '=';
	} else if (size - i == 2) {
		unsigned v = (unsigned)data[i] << 16 | (unsigned)data[i + 1] << 8;
		json[o++] = B64[v >> 18 & 63];
		json[o++] = B64[v >> 12 & 63];
		json[o++] = B64[v >> 6 & 63];
		json[o++] = '=';
	}
	json[o++] = '"';
	json[o++] = ']';
	json[o] = 0;
	st = vmsnap_call(rt, "fuzz_targets.run", json, &res);
	if (st != VMSNAP_OK) {
		fprintf(stderr, "lua_fuzz: target %s: %s: %s\n", target, vmsnap_strerror(st), vmsnap_errmsg(rt));
		abort();
	}
	vmsnap_free(res);
	return 0;
}
