# server/server.mk - normstatd, the daemon; libnsd.a holds its modules for the unit tests.
# server/src is split by part, lowest first: base/ (log, clock, options, containers),
# registry/ (runs, barrier, steps, population state), store/ (SQLite), http/
# (libmicrohttpd, TLS, routes, auth, counters), api/ (handlers, metrics), daemon/ (main,
# coordinator); relay/ (relay mode, between store/ and http/) forwards upstream with
# libnormstat, the one part of the server that uses the client library. A part includes
# its own headers and lower parts' only (tests/layers/check_includes.py); headers are named from server/src ("base/log.h").

NSD_SRCS := $(wildcard server/src/*/*.c)
NSD_OBJS := $(NSD_SRCS:%.c=$(BUILD)/%.o)
include server/ui/ui.mk
NSD_LIB_OBJS := $(filter-out $(BUILD)/server/src/daemon/main.o,$(NSD_OBJS)) $(UI_GEN_O)
NSD_A    := $(BUILD)/lib/libnsd.a
NSD_BIN  := $(BUILD)/bin/normstatd
NSD_PKGS := libmicrohttpd gnutls libuv jansson sqlite3 libcurl
NSD_LIBS  = $(call pkg_libs,$(NSD_PKGS)) -lpthread -lm

$(NSD_OBJS): NS_EXTRA_CFLAGS = $(call pkg_cflags,$(NSD_PKGS)) -Iserver/src -Iclient/include
# Unit tests of server modules include their headers ("http/routes.h", "registry/registry.h").
$(BUILD)/tests/unit/%.o: NS_INCLUDES += -Iserver/src $(call pkg_cflags,$(NSD_PKGS))

# The store's checksum with the SSE4.2 crc32 instruction, chosen at run time.
$(BUILD)/server/src/store/store_crc_sse42.o: NS_ISA_FLAGS := -msse4.2

$(NSD_A): $(NSD_LIB_OBJS)
	$(call make_static,$@,$^)

# libnormstat.a by name: client/client.mk is read after this file.
$(NSD_BIN): $(BUILD)/server/src/daemon/main.o $(NSD_A) $(BUILD)/lib/libnormstat.a $(PROTO_A) \
            $(CORE_A)
	@mkdir -p $(@D)
	$(if $(Q),@echo "  LD      $@")
	$(Q)$(CC) $(NS_LDFLAGS) $(NSD_EXPORTS) -o $@ $^ $(NSD_LIBS)

# libmicrohttpd's error pages become JSON through normstatd's own
# MHD_create_response_from_buffer (http/mhd_errors.c), which the library's
# calls bind to only if the executable exports it.
NSD_EXPORTS := -Wl,--export-dynamic-symbol=MHD_create_response_from_buffer

ALL_TARGETS += $(NSD_BIN) $(NSD_A)
# The relay's modules call libnormstat, so it follows libnsd.a on the link line.
UNIT_LINK   := $(NSD_A) $(BUILD)/lib/libnormstat.a $(UNIT_LINK)
UNIT_LIBS   += $(call pkg_libs,libmicrohttpd gnutls libuv sqlite3) -lpthread

.PHONY: install-server uninstall-server
install-server: $(NSD_BIN)
	$(INSTALL) -d $(DESTDIR)$(sbindir)
	$(INSTALL) -m 755 $(NSD_BIN) $(DESTDIR)$(sbindir)/normstatd
uninstall-server:
	rm -f $(DESTDIR)$(sbindir)/normstatd
INSTALL_TARGETS   += install-server
UNINSTALL_TARGETS += uninstall-server
