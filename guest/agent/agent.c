/*
 * microvms guest agent: PID 1 of every MicroVM.
 *
 * The same binary runs in two stages:
 *
 *  1. As /init of the shared initramfs (the root filesystem is ramfs and the
 *     kernel command line has root=): the Debian cloud kernel builds virtio as
 *     modules, so the kernel cannot mount the virtio-blk root disk itself.
 *     Stage 1 mounts /dev, /proc and /sys, loads the virtio modules, mounts the
 *     root disk, moves the API filesystems into it, frees the initramfs and
 *     executes init= (default /sbin/init, which is this agent again).
 *
 *  2. As init of the root disk (or of an initramfs without root=): finishes the
 *     mounts, loads any modules still missing, configures the network, opens
 *     the host channel, starts the application from /etc/microvms/agent.conf,
 *     forwards its output, reports readiness and exit, reaps orphans and powers
 *     the VM off when the application ends.
 *
 * Host channel: the virtio-serial port named "microvms.agent". Frames are text
 * lines "<kind> <payload>\n"; payloads are escaped (see escape()) so that any
 * byte can be carried and a frame never contains a raw newline.
 *
 *   guest -> host                          host -> guest
 *   hello version=1 uptime_ms=<n>          ping <token>
 *   log <text>       agent diagnostics     time <unix-seconds> <nanoseconds>
 *   stdout <line>    application output    entropy <hex bytes>
 *   stderr <line>                          poweroff
 *   ready uptime_ms=<n>  ready_port listens
 *   exit <code>      128+signal if killed
 *   pong <token>
 *   error <text>     a request or the configuration failed
 *   dropped <n>      frames lost while the host was not reading
 *
 * Requests are handled in order and only failures are answered (with
 * "error"), so a host that needs to know a request took effect follows it
 * with "ping <token>" and waits for the matching pong. "hello" is sent once
 * per boot; a restored snapshot continues where the snapshot was taken.
 *
 * Configuration (/etc/microvms/agent.conf), one "<key> <value>" per line,
 * values escaped like frames, '#' starts a comment line:
 *
 *   arg <string>         repeated: the argv (default /var/task/bootstrap)
 *   env <NAME=value>     repeated: the whole environment (PATH defaulted)
 *   workdir <dir>        default /var/task
 *   user <uid>:<gid>|root   default 1000:1000
 *   ready_port <port>    default 8080; 0 disables the readiness report
 *   hostname <name>      default "microvm"
 *   address <a.b.c.d/len>|none   eth0 address, default 10.0.2.15/24
 *   gateway <a.b.c.d>|none       default 10.0.2.2 (QEMU user networking)
 *
 * The configuration lives in a file rather than on the kernel command line:
 * the command line is limited to 2 KiB, environments are not, and the file is
 * part of the image that gets snapshotted.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <limits.h>
#include <net/if.h>
#include <net/route.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/reboot.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <sys/utsname.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define PROTOCOL_VERSION 1
#define CONFIG_PATH "/etc/microvms/agent.conf"
#define CHANNEL_NAME "microvms.agent"
#define MODULE_LIST "modules.microvms" /* in /lib/modules/<release>/ */
#define DEFAULT_PATH "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

#define RAMFS_MAGIC 0x858458f6
#define TMPFS_MAGIC 0x01021994
/* From <linux/random.h>, which musl does not ship. */
#define RNDADDENTROPY _IOW('R', 0x03, int[2])
#define RNDRESEEDCRNG _IO('R', 0x07)

#define LINE_CAP (16 * 1024)  /* longer output lines are split */
#define OUT_CAP (1024 * 1024) /* frames kept while the host is not reading */
#define CONTROL_RESERVE (64 * 1024) /* of OUT_CAP, for frames that are not output */
#define IN_CAP 4096           /* longest host request */
#define READY_POLL_MS 10
#define STOP_GRACE_MS 2000    /* SIGTERM to SIGKILL, for the app and orphans */
#define DEVICE_WAIT_MS 5000

/* ---------------------------------------------------------------- utils */

static uint64_t uptime_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_BOOTTIME, &ts);
	return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

static void sleep_ms(unsigned ms)
{
	struct timespec ts = { ms / 1000, (long)(ms % 1000) * 1000000 };
	while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
		;
}

/* Devices appear asynchronously after their driver loads. */
static bool wait_for_path(const char *path, unsigned timeout_ms)
{
	uint64_t deadline = uptime_ms() + timeout_ms;
	while (access(path, F_OK) != 0) {
		if (uptime_ms() >= deadline)
			return false;
		sleep_ms(5);
	}
	return true;
}

/* Reads a small text file (sysfs, procfs, the config) into a NUL-terminated buffer. */
static char *read_file(const char *path, size_t max, size_t *len_out)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return NULL;
	char *buf = malloc(max + 1);
	size_t len = 0;
	ssize_t n;
	while (buf && len < max && (n = read(fd, buf + len, max - len)) != 0) {
		if (n < 0) {
			if (errno == EINTR)
				continue;
			free(buf);
			buf = NULL;
			break;
		}
		len += (size_t)n;
	}
	close(fd);
	if (buf) {
		buf[len] = '\0';
		if (len_out)
			*len_out = len;
	}
	return buf;
}

/* Finds "key=value" on the kernel command line. */
static bool cmdline_get(const char *key, char *out, size_t out_size)
{
	char *cmdline = read_file("/proc/cmdline", 4096, NULL);
	bool found = false;
	size_t klen = strlen(key);
	if (!cmdline)
		return false;
	for (char *save = NULL, *tok = strtok_r(cmdline, " \t\n", &save); tok;
	     tok = strtok_r(NULL, " \t\n", &save)) {
		if (strncmp(tok, key, klen) == 0 && tok[klen] == '=') {
			snprintf(out, out_size, "%s", tok + klen + 1);
			found = true; /* the last occurrence wins, as in the kernel */
		}
	}
	free(cmdline);
	return found;
}

static bool cmdline_has_flag(const char *flag)
{
	char *cmdline = read_file("/proc/cmdline", 4096, NULL);
	bool found = false;
	if (!cmdline)
		return false;
	for (char *save = NULL, *tok = strtok_r(cmdline, " \t\n", &save); tok;
	     tok = strtok_r(NULL, " \t\n", &save))
		if (strcmp(tok, flag) == 0)
			found = true;
	free(cmdline);
	return found;
}

/*
 * Escaping shared by frames and the config file: backslash, and every control
 * byte as \n, \r, \t or \xHH. Bytes >= 0x80 pass through so UTF-8 stays readable.
 * dst must hold 4 * n bytes.
 */
static size_t escape(char *dst, const char *src, size_t n)
{
	static const char hex[] = "0123456789abcdef";
	char *d = dst;
	for (size_t i = 0; i < n; i++) {
		unsigned char c = (unsigned char)src[i];
		if (c == '\\') {
			*d++ = '\\';
			*d++ = '\\';
		} else if (c == '\n') {
			*d++ = '\\';
			*d++ = 'n';
		} else if (c == '\r') {
			*d++ = '\\';
			*d++ = 'r';
		} else if (c == '\t') {
			*d++ = '\\';
			*d++ = 't';
		} else if (c < 0x20 || c == 0x7f) {
			*d++ = '\\';
			*d++ = 'x';
			*d++ = hex[c >> 4];
			*d++ = hex[c & 15];
		} else {
			*d++ = (char)c;
		}
	}
	return (size_t)(d - dst);
}

static int hexval(char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	return -1;
}

/* Unescapes in place; false on a malformed escape or an escaped NUL. */
static bool unescape(char *s)
{
	char *d = s;
	while (*s) {
		if (*s != '\\') {
			*d++ = *s++;
			continue;
		}
		s++;
		switch (*s) {
		case '\\': *d++ = '\\'; s++; break;
		case 'n': *d++ = '\n'; s++; break;
		case 'r': *d++ = '\r'; s++; break;
		case 't': *d++ = '\t'; s++; break;
		case 'x': {
			int hi = hexval(s[1]), lo = hi < 0 ? -1 : hexval(s[2]);
			if (lo < 0 || (hi == 0 && lo == 0))
				return false;
			*d++ = (char)(hi << 4 | lo);
			s += 3;
			break;
		}
		default:
			return false;
		}
	}
	*d = '\0';
	return true;
}

/* ------------------------------------------------------- host channel */

/*
 * Frames go through a ring buffer and a non-blocking fd: a virtio-serial write
 * blocks while no host process is connected to the port, and the agent must keep
 * reaping and serving the application meanwhile. Output (stdout, stderr, log)
 * that does not fit is counted and reported as "dropped <n>" once there is room
 * again; the last CONTROL_RESERVE bytes are kept for the other frames, so a
 * flood of output can never cost the host its "ready" or "exit".
 */
static struct {
	int fd;              /* -1 until the port is found */
	bool connected;      /* a host process has the port open */
	size_t out_head, out_len;
	uint64_t dropped;
	size_t in_len;
	bool in_overflow;    /* discarding the rest of an over-long request */
} chan = { .fd = -1 };
/* Outside the initialized struct, so they stay in .bss and out of the binary. */
static char chan_out[OUT_CAP], chan_in[IN_CAP];

/* The caller has checked that n bytes fit. */
static void out_put(const char *p, size_t n)
{
	size_t tail = (chan.out_head + chan.out_len) % OUT_CAP;
	size_t first = n < OUT_CAP - tail ? n : OUT_CAP - tail;
	memcpy(chan_out + tail, p, first);
	memcpy(chan_out, p + first, n - first);
	chan.out_len += n;
}

static void channel_write_some(void)
{
	while (chan.fd >= 0 && chan.connected && chan.out_len > 0) {
		size_t chunk = OUT_CAP - chan.out_head;
		if (chunk > chan.out_len)
			chunk = chan.out_len;
		ssize_t n = write(chan.fd, chan_out + chan.out_head, chunk);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			if (errno != EAGAIN)
				chan.connected = false; /* rechecked on the next SIGIO */
			return;
		}
		chan.out_head = (chan.out_head + (size_t)n) % OUT_CAP;
		chan.out_len -= (size_t)n;
	}
}

/* Queues "<kind> <escaped payload>\n", after the count of dropped frames if any. */
static void send_frame(const char *kind, const char *payload, size_t n)
{
	static char frame[32 + 4 * LINE_CAP + 1];
	bool output = strcmp(kind, "stdout") == 0 || strcmp(kind, "stderr") == 0 ||
		      strcmp(kind, "log") == 0;
	if (chan.fd < 0)
		return;
	if (n > LINE_CAP)
		n = LINE_CAP;
	size_t len = (size_t)snprintf(frame, 32, "%s", kind);
	if (payload) {
		frame[len++] = ' ';
		len += escape(frame + len, payload, n);
	}
	frame[len++] = '\n';

	/* The note goes out only with the frame after it, so a slow drain yields one note. */
	char note[48];
	size_t note_len = 0;
	if (chan.dropped > 0)
		note_len = (size_t)snprintf(note, sizeof note, "dropped %llu\n",
					    (unsigned long long)chan.dropped);
	if (note_len + len + (output ? CONTROL_RESERVE : 0) > OUT_CAP - chan.out_len) {
		chan.dropped++;
		return;
	}
	if (note_len) {
		out_put(note, note_len);
		chan.dropped = 0;
	}
	out_put(frame, len);
	channel_write_some();
}

static void send_text(const char *kind, const char *fmt, ...)
{
	char buf[1024];
	va_list ap;
	va_start(ap, fmt);
	int n = vsnprintf(buf, sizeof buf, fmt, ap);
	va_end(ap);
	if (n < 0)
		return;
	send_frame(kind, buf, (size_t)n < sizeof buf ? (size_t)n : sizeof buf - 1);
}

/* Agent diagnostics go to the serial console (always) and to the host channel. */
static void agent_log(const char *fmt, ...)
{
	char buf[1024];
	va_list ap;
	va_start(ap, fmt);
	int n = vsnprintf(buf, sizeof buf, fmt, ap);
	va_end(ap);
	if (n < 0)
		return;
	if ((size_t)n >= sizeof buf)
		n = sizeof buf - 1;
	dprintf(STDERR_FILENO, "microvms-agent: %s\n", buf);
	send_frame("log", buf, (size_t)n);
}

static bool channel_poll_connected(void)
{
	struct pollfd p = { .fd = chan.fd, .events = POLLOUT };
	if (poll(&p, 1, 0) < 0)
		return chan.connected;
	return !(p.revents & POLLHUP);
}

/*
 * The kernel names a port only when the host's name message arrives, which may
 * be after virtio_console has loaded, hence the wait. /dev/virtio-ports/ symlinks
 * would need udev; sysfs has the names.
 */
static void channel_open(void)
{
	uint64_t deadline = uptime_ms() + DEVICE_WAIT_MS;
	char path[PATH_MAX];
	for (;;) {
		DIR *d = opendir("/sys/class/virtio-ports");
		struct dirent *e;
		while (d && (e = readdir(d))) {
			if (e->d_name[0] == '.')
				continue;
			snprintf(path, sizeof path, "/sys/class/virtio-ports/%s/name", e->d_name);
			char *name = read_file(path, 256, NULL);
			bool match = false;
			if (name) {
				name[strcspn(name, "\n")] = '\0';
				match = strcmp(name, CHANNEL_NAME) == 0;
				free(name);
			}
			if (!match)
				continue;
			snprintf(path, sizeof path, "/dev/%s", e->d_name);
			closedir(d);
			if (!wait_for_path(path, DEVICE_WAIT_MS)) {
				agent_log("%s did not appear; output goes to the console only", path);
				return;
			}
			chan.fd = open(path, O_RDWR | O_NONBLOCK | O_CLOEXEC);
			if (chan.fd < 0) {
				agent_log("cannot open %s: %s", path, strerror(errno));
				return;
			}
			/* SIGIO tells us when the host opens or closes its end, and when data arrives. */
			fcntl(chan.fd, F_SETOWN, getpid());
			fcntl(chan.fd, F_SETFL, fcntl(chan.fd, F_GETFL) | O_ASYNC);
			chan.connected = channel_poll_connected();
			return;
		}
		if (d)
			closedir(d);
		if (uptime_ms() >= deadline) {
			agent_log("no virtio-serial port named %s; output goes to the console only",
				  CHANNEL_NAME);
			return;
		}
		sleep_ms(10);
	}
}

/* Best effort before power-off: waits for the host to take what is queued. */
static void channel_flush(unsigned timeout_ms)
{
	uint64_t deadline = uptime_ms() + timeout_ms;
	while (chan.fd >= 0 && chan.out_len > 0) {
		chan.connected = channel_poll_connected();
		channel_write_some();
		uint64_t now = uptime_ms();
		if (chan.out_len == 0 || now >= deadline)
			break;
		struct pollfd p = { .fd = chan.fd, .events = POLLOUT };
		if (chan.connected)
			poll(&p, 1, (int)(deadline - now));
		else
			sleep_ms(10);
	}
}

/* ------------------------------------------------------------ mounts */

static bool is_mountpoint(const char *path)
{
	char parent[PATH_MAX];
	struct stat a, b;
	snprintf(parent, sizeof parent, "%s/..", path);
	if (stat(path, &a) != 0 || stat(parent, &b) != 0)
		return false;
	return a.st_dev != b.st_dev || a.st_ino == b.st_ino;
}

static void mount_once(const char *src, const char *target, const char *type,
		       unsigned long flags, const char *data)
{
	mkdir(target, 0755);
	if (is_mountpoint(target))
		return; /* stage 1 moved it here, or the kernel mounted it */
	if (mount(src, target, type, flags, data) != 0)
		agent_log("cannot mount %s on %s: %s", type, target, strerror(errno));
}

static void mount_api_filesystems(void)
{
	const unsigned long nosuid_nodev = MS_NOSUID | MS_NODEV;
	mount_once("devtmpfs", "/dev", "devtmpfs", MS_NOSUID, "mode=0755");
	mount_once("proc", "/proc", "proc", nosuid_nodev | MS_NOEXEC, NULL);
	mount_once("sysfs", "/sys", "sysfs", nosuid_nodev | MS_NOEXEC, NULL);
}

static void mount_runtime_filesystems(void)
{
	const unsigned long nosuid_nodev = MS_NOSUID | MS_NODEV;
	mount_once("devpts", "/dev/pts", "devpts", MS_NOSUID | MS_NOEXEC, "mode=0620,ptmxmode=0666");
	mount_once("shm", "/dev/shm", "tmpfs", nosuid_nodev, "mode=1777");
	mount_once("tmpfs", "/tmp", "tmpfs", nosuid_nodev, "mode=1777");
	mount_once("tmpfs", "/run", "tmpfs", nosuid_nodev, "mode=0755");
}

/* The kernel may start init without fds 0-2 when the initramfs has no /dev/console. */
static void ensure_std_fds(void)
{
	for (int fd = 0; fd < 3; fd++) {
		if (fcntl(fd, F_GETFD) >= 0)
			continue;
		int c = open("/dev/console", O_RDWR | O_NOCTTY);
		if (c < 0)
			c = open("/dev/null", O_RDWR);
		if (c >= 0 && c != fd) {
			dup2(c, fd);
			close(c);
		}
	}
}

/* ----------------------------------------------------------- modules */

/*
 * MODULE_LIST names module files relative to /lib/modules/<release>/ in load
 * order (dependencies first); the image builder writes it from modules.dep and
 * decompresses the files, so finit_module works without MODULE_DECOMPRESS.
 * A module whose /sys/module entry exists is loaded or built in, and skipped.
 */
static void load_modules(void)
{
	struct utsname u;
	char dir[PATH_MAX], path[PATH_MAX * 2];
	if (uname(&u) != 0)
		return;
	snprintf(dir, sizeof dir, "/lib/modules/%s", u.release);
	snprintf(path, sizeof path, "%s/%s", dir, MODULE_LIST);
	char *list = read_file(path, 64 * 1024, NULL);
	if (!list)
		return; /* drivers built in, or nothing to load */
	for (char *save = NULL, *line = strtok_r(list, "\n", &save); line;
	     line = strtok_r(NULL, "\n", &save)) {
		if (line[0] == '#' || line[0] == '\0')
			continue;
		char name[NAME_MAX + 1];
		const char *base = strrchr(line, '/');
		snprintf(name, sizeof name, "%s", base ? base + 1 : line);
		char *dot = strchr(name, '.');
		if (dot)
			*dot = '\0';
		for (char *c = name; *c; c++)
			if (*c == '-')
				*c = '_';
		snprintf(path, sizeof path, "/sys/module/%s", name);
		if (access(path, F_OK) == 0)
			continue;
		snprintf(path, sizeof path, "%s/%s", dir, line);
		int fd = open(path, O_RDONLY | O_CLOEXEC);
		if (fd < 0) {
			agent_log("module %s: %s", path, strerror(errno));
			continue;
		}
		if (syscall(SYS_finit_module, fd, "", 0) != 0 && errno != EEXIST)
			agent_log("module %s: %s", name, strerror(errno));
		close(fd);
	}
	free(list);
}

/* ------------------------------------------------ stage 1: initramfs */

/* Frees the initramfs as switch_root(8) does: everything on it, but not below other mounts. */
static void remove_tree(int dirfd, dev_t dev)
{
	DIR *d = fdopendir(dirfd);
	struct dirent *e;
	if (!d) {
		close(dirfd);
		return;
	}
	while ((e = readdir(d))) {
		struct stat st;
		if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0)
			continue;
		if (fstatat(dirfd, e->d_name, &st, AT_SYMLINK_NOFOLLOW) != 0 || st.st_dev != dev)
			continue;
		if (S_ISDIR(st.st_mode)) {
			int fd = openat(dirfd, e->d_name, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
			if (fd >= 0)
				remove_tree(fd, dev);
			unlinkat(dirfd, e->d_name, AT_REMOVEDIR);
		} else {
			unlinkat(dirfd, e->d_name, 0);
		}
	}
	closedir(d);
}

static void power_off(void) __attribute__((noreturn));

static void stage1_fatal(const char *fmt, ...) __attribute__((noreturn, format(printf, 1, 2)));
static void stage1_fatal(const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	dprintf(STDERR_FILENO, "microvms-agent: ");
	vdprintf(STDERR_FILENO, fmt, ap);
	dprintf(STDERR_FILENO, "\n");
	va_end(ap);
	power_off();
}

static void stage1_switch_root(const char *device)
{
	char fstype[64] = "ext4", init[PATH_MAX] = "/sbin/init";
	cmdline_get("rootfstype", fstype, sizeof fstype);
	cmdline_get("init", init, sizeof init);
	unsigned long flags = cmdline_has_flag("ro") ? MS_RDONLY : 0;

	if (!wait_for_path(device, DEVICE_WAIT_MS))
		stage1_fatal("root device %s did not appear", device);
	mkdir("/newroot", 0755);
	if (mount(device, "/newroot", fstype, flags, NULL) != 0)
		stage1_fatal("cannot mount %s (%s) on /newroot: %s", device, fstype, strerror(errno));

	static const char *const moved[] = { "/dev", "/proc", "/sys" };
	for (size_t i = 0; i < sizeof moved / sizeof moved[0]; i++) {
		char target[64];
		snprintf(target, sizeof target, "/newroot%s", moved[i]);
		mkdir(target, 0755);
		if (mount(moved[i], target, NULL, MS_MOVE, NULL) != 0)
			stage1_fatal("cannot move %s to the root disk: %s", moved[i], strerror(errno));
	}

	struct stat root;
	if (stat("/", &root) == 0)
		remove_tree(open("/", O_RDONLY | O_DIRECTORY | O_CLOEXEC), root.st_dev);

	if (chdir("/newroot") != 0 || mount(".", "/", NULL, MS_MOVE, NULL) != 0 ||
	    chroot(".") != 0 || chdir("/") != 0)
		stage1_fatal("cannot switch to the root disk: %s", strerror(errno));

	char *const argv[] = { init, NULL };
	execv(init, argv);
	stage1_fatal("cannot execute %s on the root disk: %s", init, strerror(errno));
}

static bool on_initramfs(void)
{
	struct statfs s;
	return statfs("/", &s) == 0 &&
	       ((unsigned long)s.f_type == RAMFS_MAGIC || (unsigned long)s.f_type == TMPFS_MAGIC);
}

/* ------------------------------------------------------------ config */

static struct {
	char **argv;
	size_t argc;
	char **env;
	size_t envc;
	char *workdir;
	uid_t uid;
	gid_t gid;
	unsigned ready_port;
	char *hostname;
	bool net;
	struct in_addr addr, netmask, gateway;
	bool has_gateway;
} cfg;

/* PID 1 must not abort (that panics the kernel): out of memory powers off instead. */
static void out_of_memory(void) __attribute__((noreturn));
static void out_of_memory(void)
{
	agent_log("out of memory");
	send_text("error", "agent out of memory");
	power_off();
}

static char *xstrdup(const char *s)
{
	char *copy = strdup(s);
	if (!copy)
		out_of_memory();
	return copy;
}

static void push(char ***list, size_t *count, char *item)
{
	char **grown = realloc(*list, (*count + 2) * sizeof **list);
	if (!grown)
		out_of_memory();
	grown[(*count)++] = item;
	grown[*count] = NULL;
	*list = grown;
}

static bool parse_cidr(const char *s, struct in_addr *addr, struct in_addr *mask)
{
	char ip[INET_ADDRSTRLEN];
	const char *slash = strchr(s, '/');
	char *end;
	if (!slash || (size_t)(slash - s) >= sizeof ip)
		return false;
	memcpy(ip, s, (size_t)(slash - s));
	ip[slash - s] = '\0';
	long len = strtol(slash + 1, &end, 10);
	if (*end || end == slash + 1 || len < 0 || len > 32 || inet_pton(AF_INET, ip, addr) != 1)
		return false;
	mask->s_addr = len == 0 ? 0 : htonl(0xffffffffu << (32 - len));
	return true;
}

static bool parse_number(const char *s, unsigned long max, unsigned long *out)
{
	char *end;
	errno = 0;
	unsigned long v = strtoul(s, &end, 10);
	if (errno || end == s || *end || v > max || s[0] == '-')
		return false;
	*out = v;
	return true;
}

/* Returns NULL on success, or what is wrong with the line. */
static const char *config_line(const char *key, char *value)
{
	unsigned long n, m;
	if (!unescape(value))
		return "bad escape";
	if (strcmp(key, "arg") == 0) {
		push(&cfg.argv, &cfg.argc, xstrdup(value));
	} else if (strcmp(key, "env") == 0) {
		if (!strchr(value, '=') || value[0] == '=')
			return "env needs NAME=value";
		push(&cfg.env, &cfg.envc, xstrdup(value));
	} else if (strcmp(key, "workdir") == 0) {
		cfg.workdir = xstrdup(value);
	} else if (strcmp(key, "user") == 0) {
		char *colon = strchr(value, ':');
		if (strcmp(value, "root") == 0) {
			cfg.uid = 0;
			cfg.gid = 0;
		} else if (colon) {
			*colon = '\0';
			if (!parse_number(value, 0xfffffffe, &n) || !parse_number(colon + 1, 0xfffffffe, &m))
				return "user needs <uid>:<gid> or root";
			cfg.uid = (uid_t)n;
			cfg.gid = (gid_t)m;
		} else {
			return "user needs <uid>:<gid> or root";
		}
	} else if (strcmp(key, "ready_port") == 0) {
		if (!parse_number(value, 65535, &n))
			return "ready_port needs a port number";
		cfg.ready_port = (unsigned)n;
	} else if (strcmp(key, "hostname") == 0) {
		cfg.hostname = xstrdup(value);
	} else if (strcmp(key, "address") == 0) {
		cfg.net = strcmp(value, "none") != 0;
		if (cfg.net && !parse_cidr(value, &cfg.addr, &cfg.netmask))
			return "address needs a.b.c.d/len or none";
	} else if (strcmp(key, "gateway") == 0) {
		cfg.has_gateway = strcmp(value, "none") != 0;
		if (cfg.has_gateway && inet_pton(AF_INET, value, &cfg.gateway) != 1)
			return "gateway needs a.b.c.d or none";
	} else {
		return "unknown key";
	}
	return NULL;
}

/* Returns NULL on success, or an error message for the host. */
static const char *load_config(char *err, size_t err_size)
{
	cfg.workdir = "/var/task";
	cfg.uid = 1000;
	cfg.gid = 1000;
	cfg.ready_port = 8080;
	cfg.hostname = "microvm";
	cfg.net = true;
	parse_cidr("10.0.2.15/24", &cfg.addr, &cfg.netmask);
	cfg.has_gateway = true;
	inet_pton(AF_INET, "10.0.2.2", &cfg.gateway);

	char *text = read_file(CONFIG_PATH, 1024 * 1024, NULL);
	if (!text && errno != ENOENT) {
		snprintf(err, err_size, "%s: %s", CONFIG_PATH, strerror(errno));
		return err;
	}
	unsigned lineno = 0;
	for (char *line = text, *next; line && *line; line = next) {
		next = strchr(line, '\n');
		if (next)
			*next++ = '\0';
		lineno++;
		if (line[0] == '#' || line[0] == '\0')
			continue;
		char *value = strchr(line, ' ');
		if (!value) {
			snprintf(err, err_size, "%s:%u: missing value", CONFIG_PATH, lineno);
			return err;
		}
		*value++ = '\0';
		const char *problem = config_line(line, value);
		if (problem) {
			snprintf(err, err_size, "%s:%u: %s: %s", CONFIG_PATH, lineno, line, problem);
			return err;
		}
	}
	free(text);

	if (cfg.argc == 0)
		push(&cfg.argv, &cfg.argc, "/var/task/bootstrap");
	bool has_path = false;
	for (size_t i = 0; i < cfg.envc; i++)
		has_path |= strncmp(cfg.env[i], "PATH=", 5) == 0;
	if (!has_path)
		push(&cfg.env, &cfg.envc, "PATH=" DEFAULT_PATH);
	return NULL;
}

/* ----------------------------------------------------------- network */

static bool if_set_flags(int s, const char *name, short set)
{
	struct ifreq ifr = { 0 };
	snprintf(ifr.ifr_name, IFNAMSIZ, "%s", name);
	if (ioctl(s, SIOCGIFFLAGS, &ifr) != 0)
		return false;
	ifr.ifr_flags |= set;
	return ioctl(s, SIOCSIFFLAGS, &ifr) == 0;
}

static bool if_set_in_addr(int s, const char *name, unsigned long request, struct in_addr a)
{
	struct ifreq ifr = { 0 };
	struct sockaddr_in sin = { .sin_family = AF_INET, .sin_addr = a };
	snprintf(ifr.ifr_name, IFNAMSIZ, "%s", name);
	memcpy(&ifr.ifr_addr, &sin, sizeof sin);
	return ioctl(s, request, &ifr) == 0;
}

/* Plain ioctls, so images need no ip(8); bringing lo up also gives it 127.0.0.1. */
static void network_up(void)
{
	int s = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
	if (s < 0) {
		agent_log("socket: %s", strerror(errno));
		return;
	}
	if (!if_set_flags(s, "lo", IFF_UP))
		agent_log("cannot bring up lo: %s", strerror(errno));
	if (cfg.net) {
		const char *dev = "eth0";
		uint64_t deadline = uptime_ms() + DEVICE_WAIT_MS;
		while (if_nametoindex(dev) == 0 && uptime_ms() < deadline)
			sleep_ms(10);
		if (!if_set_in_addr(s, dev, SIOCSIFADDR, cfg.addr) ||
		    !if_set_in_addr(s, dev, SIOCSIFNETMASK, cfg.netmask) ||
		    !if_set_flags(s, dev, IFF_UP)) {
			agent_log("cannot configure %s: %s", dev, strerror(errno));
		} else if (cfg.has_gateway) {
			struct rtentry rt = { 0 };
			struct sockaddr_in any = { .sin_family = AF_INET };
			struct sockaddr_in gw = { .sin_family = AF_INET, .sin_addr = cfg.gateway };
			memcpy(&rt.rt_dst, &any, sizeof any);
			memcpy(&rt.rt_genmask, &any, sizeof any);
			memcpy(&rt.rt_gateway, &gw, sizeof gw);
			rt.rt_flags = RTF_UP | RTF_GATEWAY;
			if (ioctl(s, SIOCADDRT, &rt) != 0 && errno != EEXIST)
				agent_log("cannot add the default route: %s", strerror(errno));
		}
	}
	close(s);
}

/* ------------------------------------------------------- application */

struct stream {
	int fd;
	const char *kind;
	char buf[LINE_CAP];
	size_t len;
};

static struct stream app_out = { .fd = -1, .kind = "stdout" };
static struct stream app_err = { .fd = -1, .kind = "stderr" };
static pid_t app_pid = -1;
static int app_code = -1;  /* set once the application has been reaped */

/* Sends complete lines; a line longer than LINE_CAP goes out in pieces. */
static void stream_emit(struct stream *s, bool eof)
{
	size_t start = 0;
	for (size_t i = 0; i < s->len; i++) {
		if (s->buf[i] == '\n') {
			send_frame(s->kind, s->buf + start, i - start);
			start = i + 1;
		}
	}
	if (start == 0 && s->len == LINE_CAP) {
		send_frame(s->kind, s->buf, s->len);
		start = s->len;
	}
	if (eof && start < s->len) {
		send_frame(s->kind, s->buf + start, s->len - start);
		start = s->len;
	}
	memmove(s->buf, s->buf + start, s->len - start);
	s->len -= start;
}

/* Reads what is available now; the pipes are non-blocking. */
static void stream_read(struct stream *s)
{
	while (s->fd >= 0) {
		ssize_t n = read(s->fd, s->buf + s->len, LINE_CAP - s->len);
		if (n > 0) {
			s->len += (size_t)n;
			stream_emit(s, false);
			continue;
		}
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0 && errno == EAGAIN)
			return;
		close(s->fd);
		s->fd = -1;
		stream_emit(s, true);
	}
}

/* Runs in the child: execvpe() would search the agent's PATH, not the application's. */
static void exec_app(void) __attribute__((noreturn));
static void exec_app(void)
{
	const char *file = cfg.argv[0];
	int err = ENOENT;
	if (strchr(file, '/')) {
		execve(file, cfg.argv, cfg.env);
		err = errno;
	} else {
		const char *path = DEFAULT_PATH;
		for (size_t i = 0; i < cfg.envc; i++)
			if (strncmp(cfg.env[i], "PATH=", 5) == 0)
				path = cfg.env[i] + 5;
		for (const char *p = path; *p;) {
			size_t len = strcspn(p, ":");
			char candidate[PATH_MAX];
			/* An empty PATH element means the current directory. */
			snprintf(candidate, sizeof candidate, "%.*s/%s", len ? (int)len : 1,
				 len ? p : ".", file);
			execve(candidate, cfg.argv, cfg.env);
			if (errno != ENOENT && errno != ENOTDIR)
				err = errno;
			p += len + (p[len] == ':');
		}
	}
	dprintf(STDERR_FILENO, "microvms-agent: cannot execute %s: %s\n", file, strerror(err));
	_exit(err == ENOENT ? 127 : 126);
}

static void start_app(void)
{
	int out[2], errp[2];
	if (pipe2(out, O_CLOEXEC) != 0 || pipe2(errp, O_CLOEXEC) != 0) {
		agent_log("pipe: %s", strerror(errno));
		return;
	}
	app_pid = fork();
	if (app_pid < 0) {
		agent_log("fork: %s", strerror(errno));
		return;
	}
	if (app_pid == 0) {
		/* Undo what PID 1 set up: exec keeps the signal mask and ignored signals. */
		sigset_t none;
		sigemptyset(&none);
		sigprocmask(SIG_SETMASK, &none, NULL);
		signal(SIGPIPE, SIG_DFL);
		setsid(); /* own process group, so stopping it reaches its children */
		int null = open("/dev/null", O_RDONLY);
		if (null < 0 || dup2(null, STDIN_FILENO) < 0 || dup2(out[1], STDOUT_FILENO) < 0 ||
		    dup2(errp[1], STDERR_FILENO) < 0)
			_exit(126);
		if (chdir(cfg.workdir) != 0) {
			dprintf(STDERR_FILENO, "microvms-agent: cannot enter %s: %s\n", cfg.workdir,
				strerror(errno));
			_exit(126);
		}
		if ((cfg.uid != 0 || cfg.gid != 0) &&
		    (setgroups(0, NULL) != 0 || setgid(cfg.gid) != 0 || setuid(cfg.uid) != 0)) {
			dprintf(STDERR_FILENO, "microvms-agent: cannot become %u:%u: %s\n",
				(unsigned)cfg.uid, (unsigned)cfg.gid, strerror(errno));
			_exit(126);
		}
		umask(022);
		exec_app();
	}
	close(out[1]);
	close(errp[1]);
	app_out.fd = out[0];
	app_err.fd = errp[0];
	fcntl(app_out.fd, F_SETFL, O_NONBLOCK);
	fcntl(app_err.fd, F_SETFL, O_NONBLOCK);
	agent_log("started %s as %u:%u (pid %d)", cfg.argv[0], (unsigned)cfg.uid,
		  (unsigned)cfg.gid, (int)app_pid);
}

/*
 * A listening socket in /proc/net/tcp{,6} means the port accepts connections.
 * Unlike a probe connect(), this never shows up as a request in the application,
 * and it sees sockets bound to any address, not only loopback.
 */
static bool port_listening(unsigned port)
{
	static const char *const files[] = { "/proc/net/tcp", "/proc/net/tcp6" };
	bool found = false;
	for (size_t i = 0; i < 2 && !found; i++) {
		FILE *f = fopen(files[i], "re");
		char line[256];
		if (!f)
			continue;
		while (!found && fgets(line, sizeof line, f)) {
			unsigned local_port, state;
			if (sscanf(line, " %*u: %*[0-9A-Fa-f]:%x %*[0-9A-Fa-f]:%*x %x", &local_port,
				   &state) == 2)
				found = local_port == port && state == 0x0A; /* TCP_LISTEN */
		}
		fclose(f);
	}
	return found;
}

/* Collects every exited child: PID 1 inherits all orphans. */
static void reap(void)
{
	int status;
	pid_t pid;
	while ((pid = waitpid(-1, &status, WNOHANG)) > 0) {
		if (pid != app_pid)
			continue;
		app_pid = -1;
		app_code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
	}
}

/* --------------------------------------------------------- shutdown */

static void power_off(void)
{
	sync();
	/* A clean filesystem on the root disk, whatever happens next. */
	mount(NULL, "/", NULL, MS_REMOUNT | MS_RDONLY, NULL);
	reboot(RB_POWER_OFF);
	/* PID 1 must never exit: that panics the kernel and loses the reason. */
	for (;;)
		pause();
}

/* Sends sig to every process but us, then waits for them to go (bounded). */
static bool kill_all(int sig, int sigfd, unsigned timeout_ms)
{
	uint64_t deadline = uptime_ms() + timeout_ms;
	kill(-1, sig);
	for (;;) {
		int status;
		pid_t pid = waitpid(-1, &status, WNOHANG);
		if (pid < 0 && errno == ECHILD)
			return true;
		if (pid > 0)
			continue;
		uint64_t now = uptime_ms();
		if (now >= deadline)
			return false;
		struct pollfd p = { .fd = sigfd, .events = POLLIN };
		if (poll(&p, 1, (int)(deadline - now)) > 0) {
			struct signalfd_siginfo si;
			while (read(sigfd, &si, sizeof si) > 0)
				;
		}
	}
}

static void finish(int sigfd) __attribute__((noreturn));
static void finish(int sigfd)
{
	if (!kill_all(SIGTERM, sigfd, STOP_GRACE_MS))
		kill_all(SIGKILL, sigfd, STOP_GRACE_MS);
	agent_log("powering off");
	channel_flush(1000);
	power_off();
}

/* ---------------------------------------------------- host requests */

/* Stopping on request: SIGTERM, then SIGKILL once the grace period is over. */
static enum { RUNNING, TERMINATING, KILLED } stop_state = RUNNING;
static uint64_t kill_deadline;

static void signal_app(int sig)
{
	/* The group reaches the app's children; the pid covers a child not yet in setsid(). */
	if (app_pid > 0 && kill(-app_pid, sig) != 0)
		kill(app_pid, sig);
}

static void stop_app(void)
{
	if (stop_state != RUNNING)
		return;
	stop_state = TERMINATING;
	kill_deadline = uptime_ms() + STOP_GRACE_MS;
	signal_app(SIGTERM);
}

/*
 * "entropy <hex>": host randomness, credited in full. Under TCG without RDRAND
 * the kernel's CRNG is not even initialized for seconds after boot, and restored
 * copies of one snapshot share its state (this kernel has no vmgenid driver).
 * The host controls the VM anyway, so trusting its bytes costs nothing; the
 * forced reseed makes the next random bytes depend on them at once.
 */
static void add_entropy(const char *hex)
{
	struct {
		int entropy_count; /* bits */
		int buf_size;      /* bytes */
		unsigned char buf[IN_CAP / 2];
	} pool;
	size_t n = 0;
	for (; hex[2 * n] && hex[2 * n + 1] && n < sizeof pool.buf; n++) {
		int hi = hexval(hex[2 * n]), lo = hexval(hex[2 * n + 1]);
		if (hi < 0 || lo < 0)
			break;
		pool.buf[n] = (unsigned char)(hi << 4 | lo);
	}
	if (n == 0 || hex[2 * n]) {
		send_text("error", "entropy needs hex bytes");
		return;
	}
	pool.entropy_count = (int)n * 8;
	pool.buf_size = (int)n;
	int fd = open("/dev/urandom", O_RDONLY | O_CLOEXEC);
	if (fd < 0 || ioctl(fd, RNDADDENTROPY, &pool) != 0 || ioctl(fd, RNDRESEEDCRNG) != 0)
		send_text("error", "entropy: %s", strerror(errno));
	if (fd >= 0)
		close(fd);
}

static void handle_request(char *line)
{
	char *arg = strchr(line, ' ');
	if (arg)
		*arg++ = '\0';
	else
		arg = line + strlen(line);

	if (strcmp(line, "ping") == 0) {
		send_frame("pong", arg, strlen(arg));
	} else if (strcmp(line, "time") == 0) {
		/* The host corrects the clock after a restore: the snapshot froze it. */
		long long sec, nsec;
		struct timespec ts;
		if (sscanf(arg, "%lld %lld", &sec, &nsec) != 2 || nsec < 0 || nsec >= 1000000000) {
			send_text("error", "time needs <seconds> <nanoseconds>");
			return;
		}
		ts.tv_sec = (time_t)sec;
		ts.tv_nsec = (long)nsec;
		if (clock_settime(CLOCK_REALTIME, &ts) != 0)
			send_text("error", "time: %s", strerror(errno));
	} else if (strcmp(line, "entropy") == 0) {
		add_entropy(arg);
	} else if (strcmp(line, "poweroff") == 0) {
		stop_app();
	} else {
		send_text("error", "unknown request: %s", line);
	}
}

static void channel_read(void)
{
	for (;;) {
		ssize_t n = read(chan.fd, chan_in + chan.in_len, IN_CAP - chan.in_len);
		if (n < 0 && errno == EINTR)
			continue;
		if (n == 0)
			chan.connected = false; /* the host closed its end */
		if (n <= 0)
			return;
		chan.in_len += (size_t)n;
		char *start = chan_in, *nl;
		while ((nl = memchr(start, '\n', chan.in_len - (size_t)(start - chan_in)))) {
			*nl = '\0';
			if (!chan.in_overflow)
				handle_request(start);
			chan.in_overflow = false;
			start = nl + 1;
		}
		chan.in_len -= (size_t)(start - chan_in);
		memmove(chan_in, start, chan.in_len);
		if (chan.in_len == IN_CAP) {
			send_text("error", "request longer than %d bytes", IN_CAP);
			chan.in_overflow = true;
			chan.in_len = 0;
		}
	}
}

/* ------------------------------------------------------------- main */

static int setup_signals(void)
{
	sigset_t set;
	sigemptyset(&set);
	sigaddset(&set, SIGCHLD);
	sigaddset(&set, SIGTERM);
	sigaddset(&set, SIGINT); /* ctrl-alt-del, once RB_DISABLE_CAD is set */
	sigaddset(&set, SIGIO);
	sigprocmask(SIG_BLOCK, &set, NULL);
	signal(SIGPIPE, SIG_IGN);
	int fd = signalfd(-1, &set, SFD_NONBLOCK | SFD_CLOEXEC);
	if (fd < 0) {
		agent_log("signalfd: %s", strerror(errno));
		power_off();
	}
	return fd;
}

int main(void)
{
	/* Everything below (mounts, reboot, kill(-1)) is only safe inside a guest. */
	if (getpid() != 1) {
		fprintf(stderr, "microvms-agent: must run as PID 1 of a MicroVM\n");
		return 1;
	}
	mount_api_filesystems();
	ensure_std_fds();

	char root[PATH_MAX];
	if (on_initramfs() && cmdline_get("root", root, sizeof root)) {
		load_modules();
		stage1_switch_root(root);
	}

	mount_runtime_filesystems();
	reboot(RB_DISABLE_CAD);
	int sigfd = setup_signals();
	load_modules();
	channel_open();
	send_text("hello", "version=%d uptime_ms=%llu", PROTOCOL_VERSION,
		  (unsigned long long)uptime_ms());

	char err[PATH_MAX + 256];
	if (load_config(err, sizeof err)) {
		agent_log("%s", err);
		send_text("error", "%s", err);
		finish(sigfd);
	}
	if (sethostname(cfg.hostname, strlen(cfg.hostname)) != 0)
		agent_log("sethostname: %s", strerror(errno));
	network_up();
	start_app();
	if (app_pid < 0)
		finish(sigfd);

	bool ready = cfg.ready_port == 0;
	for (;;) {
		struct pollfd p[4] = {
			{ .fd = sigfd, .events = POLLIN },
			{ .fd = app_out.fd, .events = POLLIN },
			{ .fd = app_err.fd, .events = POLLIN },
			/* A disconnected port polls as always readable: leave it out until SIGIO. */
			{ .fd = chan.connected ? chan.fd : -1,
			  .events = POLLIN | (chan.out_len ? POLLOUT : 0) },
		};
		int timeout = -1;
		if (!ready)
			timeout = READY_POLL_MS;
		if (stop_state == TERMINATING) {
			uint64_t now = uptime_ms();
			int left = now >= kill_deadline ? 0 : (int)(kill_deadline - now);
			if (timeout < 0 || left < timeout)
				timeout = left;
		}
		if (poll(p, 4, timeout) < 0 && errno != EINTR)
			agent_log("poll: %s", strerror(errno));

		if (p[0].revents & POLLIN) {
			struct signalfd_siginfo si;
			while (read(sigfd, &si, sizeof si) == sizeof si) {
				if (si.ssi_signo == SIGCHLD)
					reap();
				else if (si.ssi_signo == SIGTERM || si.ssi_signo == SIGINT)
					stop_app();
				else if (si.ssi_signo == SIGIO && chan.fd >= 0)
					chan.connected = channel_poll_connected();
			}
		}
		if (p[1].revents)
			stream_read(&app_out);
		if (p[2].revents)
			stream_read(&app_err);
		if (p[3].revents & POLLHUP)
			chan.connected = false;
		else if (p[3].revents & POLLIN)
			channel_read();
		channel_write_some();

		if (!ready && app_code < 0 && port_listening(cfg.ready_port)) {
			ready = true;
			send_text("ready", "uptime_ms=%llu", (unsigned long long)uptime_ms());
		}
		if (stop_state == TERMINATING && uptime_ms() >= kill_deadline) {
			signal_app(SIGKILL);
			stop_state = KILLED; /* its SIGCHLD ends the loop */
		}
		if (app_code >= 0) {
			/* It has exited, so everything it wrote is in the pipes already. */
			stream_read(&app_out);
			stream_read(&app_err);
			stream_emit(&app_out, true);
			stream_emit(&app_err, true);
			send_text("exit", "%d", app_code);
			finish(sigfd);
		}
	}
}
