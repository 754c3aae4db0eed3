/*
** main.c -- the `vmsnap` program, written only against vmsnap.h.
**
** Like lua.c: options are validated before any Lua runs, main() only sets
** up the runtime and reports the outcome, and SIGINT (or SIGTERM) only requests
** cancellation (a second SIGINT exits at once).  Commands other than
** running a script (serve, get, snapshot, ...) are Lua modules
** `vmsnap.cli.<command>`, reached through `vmsnap.cli`.
**
** Exit codes: 0 ok, 1 error, 2 usage, 3 the workflow reported failure,
** 130 interrupted. A service (serve, up, controller) that a signal stops
** and that shuts down cleanly exits 0 and says nothing: that is its normal end.
*/
#define _POSIX_C_SOURCE 200809L /* unsetenv */
#include <errno.h>
#include <signal.h>
#include <sys/prctl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "vmsnap.h"

#define EXIT_USAGE 2
#define EXIT_WORKFLOW 3
#define EXIT_INTERRUPTED 130

static const char *progname = "vmsnap";
static vmsnap_runtime *g_rt;
static volatile sig_atomic_t g_interrupts;

static const char usage_text[] =
    "usage: vmsnap [options] [script [args...]]\n"
    "       vmsnap run SCRIPT [args...]\n"
    "       vmsnap -e CODE [args...]\n"
    "       vmsnap COMMAND [args...]      (see 'vmsnap help')\n"
    "\n"
    "Runs Lua 5.4 scripts as tasks on vmsnap's event loop, with the vmsnap.*\n"
    "modules (task, http, json, yaml, log, proc, fs) available to require.\n"
    "\n"
    "options:\n"
    "  -e CODE               run CODE (instead of a script)\n"
    "  --check               compile the script only; report syntax errors\n"
    "  --path DIRS           prepend DIRS (';'-separated) to the module search path;\n"
    "                        also $VMSNAP_PATH. DIR means DIR/?.lua and DIR/?/init.lua\n"
    "  --plugin-path DIRS    where C plugins are found (DIR/?.so)\n"
    "  --deadline SECONDS    fail the run with TIMEOUT after SECONDS\n"
    "  --memory-limit SIZE   cap the Lua heap (bytes, or with k/m/g)\n"
    "  --log-level LEVEL     debug, info (default), warn or error\n"
    "  --log-json            log records as JSON lines\n"
    "  -v, --version         print the versions of vmsnap and its libraries\n"
    "  -h, --help            print this help\n"
    "  --                    stop handling options\n"
    "\n"
    "exit status: 0 ok, 1 error, 2 usage, 3 the workflow reported failure,\n"
    "130 interrupted (the first Ctrl-C cancels the running tasks, which run\n"
    "their cleanups; a second one exits at once).\n";


typedef struct Options {
	const char *code;
	const char *script;
	int script_idx; /* argv index of the script (or of -e's first arg) */
	int check;
	int help; /* --help: the commands' list follows the options */
	const char *command;
	char *lua_path;
	const char *plugin_path;
	double deadline;
	size_t memory_limit;
	int log_level;
	int log_json;
} Options;

static int usage_error(const char *fmt, const char *arg)
{
	fprintf(stderr, "%s: ", progname);
	fprintf(stderr, fmt, arg);
	fprintf(stderr, "\nTry '%s --help' for more information.\n", progname);
	return EXIT_USAGE;
}

static int parse_size(const char *s, size_t *out)
{
	char *end;
	errno = 0;
	double v = strtod(s, &end);
	if (errno || end == s || v < 0)
		return -1;
	switch (*end) {
	case 'k': case 'K': v *= 1024; end++; break;
	case 'm': case 'M': v *= 1024.0 * 1024; end++; break;
	case 'g': case 'G': v *= 1024.0 * 1024 * 1024; end++; break;
	default: break;
	}
	if (*end == 'b' || *end == 'B')
		end++;
	if (*end)
		return -1;
	*out = (size_t)v;
	return 0;
}

/* "a;b" -> "a/?.lua;a/?/init.lua;b/?.lua;b/?/init.lua" (entries holding
** a '?' are kept as they are) */
static char *expand_path(const char *dirs)
{
	size_t cap = strlen(dirs) * 2 + 64, n = 0;
	char *out = (char *)malloc(cap);
	const char *p = dirs;
	if (!out)
		return NULL;
	out[0] = 0;
	while (*p) {
		const char *e = strchr(p, ';');
		size_t len = e ? (size_t)(e - p) : strlen(p);
		if (len > 0) {
			size_t need = n + len * 2 + 32;
			if (need > cap) {
				cap = need * 2;
				char *np = (char *)realloc(out, cap);
				if (!np) {
					free(out);
					return NULL;
				}
				out = np;
			}
			if (memchr(p, '?', len))
				n += (size_t)snprintf(out + n, cap - n, "%s%.*s", n ? ";" : "", (int)len, p);
			else
				n += (size_t)snprintf(out + n, cap - n, "%s%.*s/?.lua;%.*s/?/init.lua",
				                      n ? ";" : "", (int)len, p, (int)len, p);
		}
		p += len;
		if (*p == ';')
			p++;
	}
	return out;
}

static int append_path(Options *o, const char *dirs)
{
	char *x = expand_path(dirs);
	if (!x)
		return -1;
	if (!o->lua_path) {
		o->lua_path = x;
		return 0;
	}
	size_t n = strlen(o->lua_path) + strlen(x) + 2;
	char *j = (char *)malloc(n);
	if (!j) {
		free(x);
		return -1;
	}
	snprintf(j, n, "%s;%s", o->lua_path, x);
	free(o->lua_path);
	free(x);
	o->lua_path = j;
	return 0;
}

static int is_command_word(const char *s)
{
	struct stat st;
	if (strchr(s, '/') || strchr(s, '.'))
		return 0;
	return stat(s, &st) != 0; /* an existing file named like a command runs as a script */
}

/* Returns -1 to continue, or an exit code. */
static int collect_args(int argc, char **argv, Options *o)
{
	int i;
	for (i = 1; i < argc; i++) {
		const char *a = argv[i];
		if (strcmp(a, "--") == 0) {
			i++;
			break;
		}
		if (a[0] != '-' || a[1] == 0)
			break; /* a script, a command or "-" (stdin) */
		if (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0) {
			/* the options; the commands come from vmsnap.cli's table */
			fputs(usage_text, stdout);
			fputs("\n", stdout);
			o->help = 1;
			return -1;
		} else if (strcmp(a, "-v") == 0 || strcmp(a, "--version") == 0) {
			o->command = "version";
			return -1;
		} else if (strcmp(a, "-e") == 0) {
			if (++i >= argc)
				return usage_error("option '%s' needs an argument", a);
			o->code = argv[i];
		} else if (strcmp(a, "--check") == 0) {
			o->check = 1;
		} else if (strcmp(a, "--log-json") == 0) {
			o->log_json = 1;
		} else if (strcmp(a, "--path") == 0 || strcmp(a, "--plugin-path") == 0 ||
		           strcmp(a, "--deadline") == 0 || strcmp(a, "--memory-limit") == 0 ||
		           strcmp(a, "--log-level") == 0) {
			const char *v;
			if (++i >= argc)
				return usage_error("option '%s' needs an argument", a);
			v = argv[i];
			if (strcmp(a, "--path") == 0) {
				if (append_path(o, v))
					return usage_error("%s", "out of memory");
			} else if (strcmp(a, "--plugin-path") == 0) {
				o->plugin_path = v;
			} else if (strcmp(a, "--deadline") == 0) {
				char *end;
				o->deadline = strtod(v, &end);
				if (*end || end == v || o->deadline <= 0)
					return usage_error("--deadline: '%s' is not a positive number of seconds", v);
			} else if (strcmp(a, "--memory-limit") == 0) {
				if (parse_size(v, &o->memory_limit) || o->memory_limit == 0)
					return usage_error("--memory-limit: '%s' is not a size like 64m", v);
			} else {
				if (strcmp(v, "debug") == 0)
					o->log_level = VMSNAP_LOG_DEBUG;
				else if (strcmp(v, "info") == 0)
					o->log_level = VMSNAP_LOG_INFO;
				else if (strcmp(v, "warn") == 0)
					o->log_level = VMSNAP_LOG_WARN;
				else if (strcmp(v, "error") == 0)
					o->log_level = VMSNAP_LOG_ERROR;
				else
					return usage_error("--log-level: '%s' is not one of debug, info, warn, error", v);
			}
		} else {
			return usage_error("unknown option '%s'", a);
		}
	}
	o->script_idx = i;
	if (o->code)
		return -1;
	if (i < argc) {
		const char *s = argv[i];
		if (strcmp(s, "run") == 0 && !o->check) {
			if (i + 1 >= argc)
				return usage_error("%s", "'run' needs a script");
			o->script_idx = i + 1;
			o->script = argv[i + 1];
		} else if (is_command_word(s) && !o->check) {
			o->command = s;
		} else {
			o->script = s;
		}
	} else if (!o->check) {
		if (isatty(0))
			return usage_error("%s", "no script given (use '-' to read standard input)");
		o->script = "-";
	}
	if (o->check && !o->script)
		return usage_error("%s", "--check needs a script");
	return -1;
}

static void on_sigint(int sig)
{
	(void)sig;
	if (g_interrupts++ > 0) {
		static const char msg[] = "\nvmsnap: interrupted\n";
		ssize_t r = write(2, msg, sizeof msg - 1);
		(void)r;
		_exit(EXIT_INTERRUPTED);
	}
	if (g_rt)
		vmsnap_cancel(g_rt);
}

static void print_versions(void)
{
	const vmsnap_build_info *b = vmsnap_get_build_info();
	printf("vmsnap %s\n", vmsnap_version());
	printf("%s\n", b->lua);
	printf("libuv %s\n", b->libuv);
	printf("libcurl %s\n", b->libcurl);
	printf("libyaml %s\n", b->libyaml);
	printf("lua-cjson %s\n", b->cjson);
	if (b->options && *b->options)
		printf("build: %s\n", b->options);
}

/* the commands that run until they are stopped: a stop is their normal end */
static int is_service(const char *cmd)
{
	return cmd && (strcmp(cmd, "serve") == 0 || strcmp(cmd, "up") == 0 || strcmp(cmd, "controller") == 0);
}

static int report(vmsnap_runtime *rt, vmsnap_status st)
{
	const char *code = vmsnap_errcode(rt);
	switch (st) {
	case VMSNAP_OK:
		return 0;
	case VMSNAP_ERR_CANCELLED:
		fprintf(stderr, "%s: interrupted\n", progname);
		return EXIT_INTERRUPTED;
	case VMSNAP_ERR_WORKFLOW:
		fprintf(stderr, "%s: %s\n", progname, vmsnap_errmsg(rt));
		return EXIT_WORKFLOW;
	default:
		/* no traceback for usage errors and for a command's own error report */
		if (code && (strcmp(code, "USAGE") == 0 || strcmp(code, "COMMAND") == 0)) {
			const char *m = vmsnap_errmsg(rt), *tb = strstr(m, "\nstack traceback");
			if (strcmp(code, "USAGE") == 0)
				fprintf(stderr, "%s: ", progname);
			fprintf(stderr, "%.*s\n", tb ? (int)(tb - m) : (int)strlen(m), m);
			return strcmp(code, "USAGE") == 0 ? EXIT_USAGE : 1;
		}
		fprintf(stderr, "%s: %s\n", progname, vmsnap_errmsg(rt));
		return 1;
	}
}

int main(int argc, char **argv)
{
	Options o;
	vmsnap_config *cfg;
	vmsnap_runtime *rt = NULL;
	vmsnap_status st;
	int r, ret = 0, service_stopped = 0;
	const char *env_path = getenv("VMSNAP_PATH");

	memset(&o, 0, sizeof o);
	o.log_level = VMSNAP_LOG_INFO;
	r = collect_args(argc, argv, &o);
	if (r >= 0) {
		free(o.lua_path);
		return r;
	}
	if (o.command && strcmp(o.command, "version") == 0) {
		print_versions();
		free(o.lua_path);
		return 0;
	}
	if (env_path && *env_path && append_path(&o, env_path)) {
		free(o.lua_path);
		return 1;
	}

	cfg = vmsnap_config_new();
	if (!cfg) {
		fprintf(stderr, "%s: out of memory\n", progname);
		free(o.lua_path);
		return 1;
	}
	vmsnap_config_set_search_path(cfg, o.lua_path, o.plugin_path);
	vmsnap_config_set_deadline(cfg, o.deadline);
	vmsnap_config_set_memory_limit(cfg, o.memory_limit);
	vmsnap_config_set_log(cfg, NULL, NULL, o.log_level);
	vmsnap_config_set_log_json(cfg, o.log_json);
	free(o.lua_path);
	st = vmsnap_open(cfg, &rt);
	vmsnap_config_free(cfg);
	if (st != VMSNAP_OK) {
		fprintf(stderr, "%s: %s\n", progname, rt ? vmsnap_errmsg(rt) : vmsnap_strerror(st));
		vmsnap_close(rt);
		return 1;
	}
	g_rt = rt;
	signal(SIGINT, on_sigint);
	signal(SIGTERM, on_sigint); /* a service manager's stop: the same orderly cancel */
	{
		/* VMSNAP_PARENT_PID=PID (the tests start their servers so): stop as on
		** SIGTERM when that parent goes, so that a test killed half-way leaves
		** no platform running, no image mounted */
		const char *pp = getenv("VMSNAP_PARENT_PID");
		if (pp && *pp) {
			prctl(PR_SET_PDEATHSIG, SIGTERM);
			if ((long)getppid() != atol(pp))
				raise(SIGTERM); /* gone already */
			unsetenv("VMSNAP_PARENT_PID"); /* for this process only, not its children */
		}
	}

	if (o.help) {
		static const char boot[] = "return require('vmsnap.cli').print_commands()";
		st = vmsnap_run_buffer(rt, boot, sizeof boot - 1, "=vmsnap");
		ret = report(rt, st);
	} else if (o.check) {
		st = vmsnap_check_file(rt, strcmp(o.script, "-") == 0 ? NULL : o.script);
		ret = report(rt, st);
	} else if (o.command) {
		/* arg[0] = command, arg[1..] = its arguments */
		vmsnap_set_args(rt, argc - o.script_idx, argv + o.script_idx);
		static const char boot[] = "return require('vmsnap.cli').main(...)";
		st = vmsnap_run_buffer(rt, boot, sizeof boot - 1, "=vmsnap");
		if (g_interrupts && is_service(o.command) && (st == VMSNAP_OK || st == VMSNAP_ERR_CANCELLED))
			service_stopped = 1;
		else
			ret = report(rt, st);
	} else if (o.code) {
		/* arg[0] = "-e"-less: the args after CODE are arg[1..] */
		vmsnap_set_args(rt, argc - o.script_idx + 1, argv + o.script_idx - 1);
		st = vmsnap_run_buffer(rt, o.code, strlen(o.code), "=(command line)");
		ret = report(rt, st);
	} else {
		vmsnap_set_args(rt, argc - o.script_idx, argv + o.script_idx);
		st = vmsnap_run_file(rt, strcmp(o.script, "-") == 0 ? NULL : o.script);
		ret = report(rt, st);
	}
	signal(SIGINT, SIG_DFL);
	signal(SIGTERM, SIG_DFL);
	g_rt = NULL;
	vmsnap_close(rt);
	if (ret == 0 && g_interrupts && !service_stopped)
		ret = EXIT_INTERRUPTED;
	return ret;
}
