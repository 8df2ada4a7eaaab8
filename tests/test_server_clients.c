/* test_server_clients.c: `dsv32 serve` against real clients, on the
 * scripted fixture model (whose answers are known): the official `openai`
 * npm package (chat, streamed chat, tool-call round) and the chat page in
 * headless Chromium. The npm packages are installed on first use into a
 * cache folder ($DSV32_NODE_CACHE, else ~/.cache/dsv32-test-node); a
 * machine without node, npm, the registry or Chromium skips these tests and
 * says why (tools/install-deps.sh installs node, npm and chromium), unless
 * DSV32_REQUIRE_NODE / DSV32_REQUIRE_CHROMIUM make that a failure (CI). */
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "server_util.h"
#include "test.h"

#define NODE_PACKAGES "openai@4.104.0 puppeteer-core@23.11.1"

static int exists(const char *dir, const char *rel) {
    char path[1200];
    struct stat st;
    snprintf(path, sizeof path, "%s/%s", dir, rel);
    return stat(path, &st) == 0;
}

/* The node_modules folder holding both packages (installed if needed). */
static const char *node_modules(void) {
    static char dir[1024], mods[1100];
    if (test_run("command -v node && command -v npm", NULL) != 0)
        SKIP_UNLESS_REQUIRED("DSV32_REQUIRE_NODE", "node and npm are not installed (tools/install-deps.sh installs them)");
    const char *cache = getenv("DSV32_NODE_CACHE"), *home = getenv("HOME");
    if (cache && *cache) snprintf(dir, sizeof dir, "%s", cache);
    else snprintf(dir, sizeof dir, "%s/.cache/dsv32-test-node", home && *home ? home : "/tmp");
    snprintf(mods, sizeof mods, "%s/node_modules", dir);
    if (exists(mods, "openai/package.json") && exists(mods, "puppeteer-core/package.json")) return mods;
    char cmd[4096], *out = NULL;
    snprintf(cmd, sizeof cmd,
             "mkdir -p '%s' && cd '%s' && timeout 600 npm install --prefix . --no-audit --no-fund "
             "--loglevel=error " NODE_PACKAGES " 2>&1 | tail -5",
             dir, dir);
    test_run(cmd, &out);
    if (!exists(mods, "openai/package.json") || !exists(mods, "puppeteer-core/package.json"))
        SKIP_UNLESS_REQUIRED("DSV32_REQUIRE_NODE", "npm could not install " NODE_PACKAGES " into %s: %s", dir, out ? out : "");
    free(out);
    return mods;
}

TEST(server_openai_client) {
    const char *mods = node_modules();
    server s;
    server_start(&s, fixture_scripted(), "-t 1 --api-key test-key");
    char cmd[2048], *out = NULL;
    snprintf(cmd, sizeof cmd, "NODE_PATH='%s' node tests/server/openai_client.js http://127.0.0.1:%d scripted test-key 2>&1",
             mods, s.port);
    int rc = test_run(cmd, &out);
    CHECKF(rc == 0 && out && strstr(out, "openai client: ok"), "exit %d:\n%s", rc, out ? out : "");
    free(out);
    CHECK_EQ_INT(server_stop(&s), 0);
}

TEST(server_chat_page_in_chromium) {
    char *chromium = NULL;
    if (test_run("command -v chromium || command -v chromium-browser", &chromium) != 0 || !chromium)
        SKIP_UNLESS_REQUIRED("DSV32_REQUIRE_CHROMIUM", "Chromium is not installed (tools/install-deps.sh installs Debian's chromium)");
    chromium[strcspn(chromium, "\n")] = 0;
    const char *mods = node_modules();
    server s;
    server_start(&s, fixture_scripted(), "-t 1");
    char shot[1024], cmd[4096], *out = NULL;
    snprintf(shot, sizeof shot, "%s/chat.png", test_tmpdir());
    snprintf(cmd, sizeof cmd, "NODE_PATH='%s' timeout 300 node tests/server/chat_page.js http://127.0.0.1:%d '%s' '%s' 2>&1",
             mods, s.port, chromium, shot);
    int rc = test_run(cmd, &out);
    CHECKF(rc == 0 && out && strstr(out, "chat page: ok"), "exit %d:\n%s", rc, out ? out : "");
    size_t len = 0;
    unsigned char *png = test_read_file(shot, &len);
    CHECKF(png && len > 5000 && !memcmp(png, "\x89PNG", 4), "no screenshot at %s", shot);
    /* Keep the picture when asked (the test folder is removed afterwards). */
    const char *keep = getenv("DSV32_SCREENSHOT_DIR");
    if (png && keep && *keep) {
        snprintf(cmd, sizeof cmd, "cp '%s' '%s/chat.png'", shot, keep);
        CHECK(system(cmd) == 0);
    }
    free(png);
    free(out);
    free(chromium);
    CHECK_EQ_INT(server_stop(&s), 0);
}
