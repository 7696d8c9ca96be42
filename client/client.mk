# client/client.mk - libnormstat (the C client, libcurl + libuv) and the normstat CLI.

CLIENT_SOVERSION := 0
CLIENT_SRCS := $(wildcard client/src/*.c)
CLIENT_OBJS := $(CLIENT_SRCS:%.c=$(BUILD)/%.o)
CLIENT_A    := $(BUILD)/lib/libnormstat.a
CLIENT_SO   := $(BUILD)/lib/libnormstat.so
CLIENT_PC   := $(BUILD)/lib/pkgconfig/libnormstat.pc
CLIENT_PKGS := libcurl libuv jansson
CLIENT_LIBS  = $(call pkg_libs,$(CLIENT_PKGS)) -lpthread -lm
CLI_SRCS    := $(wildcard client/cli/*.c)
CLI_OBJS    := $(CLI_SRCS:%.c=$(BUILD)/%.o)
CLI_BIN     := $(BUILD)/bin/normstat

NS_INCLUDES += -Iclient/include

$(CLIENT_OBJS) $(CLI_OBJS): NS_EXTRA_CFLAGS = $(call pkg_cflags,$(CLIENT_PKGS)) -Iclient/src
# Users of ns_buf_t and ns_report_t call libnsproto directly, hence -lnsproto in Libs.
# Unit tests of the client include <uv.h> and <curl/curl.h> through client.h.
$(BUILD)/tests/unit/%.o: NS_INCLUDES += $(call pkg_cflags,$(CLIENT_PKGS))

$(CLIENT_A): $(CLIENT_OBJS)
	$(call make_static,$@,$^)

$(CLIENT_SO).$(CLIENT_SOVERSION): $(CLIENT_OBJS) $(PROTO_SO) $(CORE_SO)
	@mkdir -p $(@D)
	$(if $(Q),@echo "  LD      $@")
	$(Q)$(CC) -shared -Wl,-soname,libnormstat.so.$(CLIENT_SOVERSION) $(NS_LDFLAGS) -o $@ \
	    $(CLIENT_OBJS) -L$(BUILD)/lib -lnsproto -lnscore $(CLIENT_LIBS)

$(CLIENT_SO): $(CLIENT_SO).$(CLIENT_SOVERSION)
	$(Q)ln -sf libnormstat.so.$(CLIENT_SOVERSION) $@

$(CLIENT_PC): client/client.mk Makefile
	$(call gen_pc,libnormstat,normstat C client (libcurl; asynchronous on libuv),libcurl libuv jansson,-lnormstat -lnsproto -lnscore,-fopenmp -lpthread -lm)

$(CLI_BIN): $(CLI_OBJS) $(CLIENT_A) $(PROTO_A) $(CORE_A)
	@mkdir -p $(@D)
	$(if $(Q),@echo "  LD      $@")
	$(Q)$(CC) $(NS_LDFLAGS) -o $@ $^ $(CLIENT_LIBS)

ALL_TARGETS += $(CLIENT_A) $(CLIENT_SO) $(CLIENT_PC) $(CLI_BIN)
UNIT_LINK   := $(CLIENT_A) $(UNIT_LINK)
UNIT_LIBS   += $(call pkg_libs,libcurl libuv) -lpthread

.PHONY: install-client uninstall-client
install-client: $(CLIENT_A) $(CLIENT_SO) $(CLIENT_PC) $(CLI_BIN)
	$(INSTALL) -d $(DESTDIR)$(includedir)/normstat $(DESTDIR)$(libdir) $(DESTDIR)$(pkgconfigdir) \
	    $(DESTDIR)$(bindir)
	$(INSTALL) -m 644 client/include/normstat/client.h $(DESTDIR)$(includedir)/normstat/
	$(INSTALL) -m 644 $(CLIENT_A) $(DESTDIR)$(libdir)/
	$(INSTALL) -m 755 $(CLIENT_SO).$(CLIENT_SOVERSION) $(DESTDIR)$(libdir)/
	ln -sf libnormstat.so.$(CLIENT_SOVERSION) $(DESTDIR)$(libdir)/libnormstat.so
	$(INSTALL) -m 644 $(CLIENT_PC) $(DESTDIR)$(pkgconfigdir)/
	$(INSTALL) -m 755 $(CLI_BIN) $(DESTDIR)$(bindir)/normstat
uninstall-client:
	rm -f $(DESTDIR)$(includedir)/normstat/client.h \
	      $(DESTDIR)$(libdir)/libnormstat.a $(DESTDIR)$(libdir)/libnormstat.so \
	      $(DESTDIR)$(libdir)/libnormstat.so.$(CLIENT_SOVERSION) \
	      $(DESTDIR)$(pkgconfigdir)/libnormstat.pc $(DESTDIR)$(bindir)/normstat
	-rmdir $(DESTDIR)$(includedir)/normstat 2>/dev/null
INSTALL_TARGETS   += install-client
UNINSTALL_TARGETS += uninstall-client

# A miniature trainer on the library, run by tests/integration/test_cli.py.
CLIENT_TRAINER := $(BUILD)/tests/integration/client_trainer
$(BUILD)/tests/integration/client_trainer.o: NS_EXTRA_CFLAGS = $(call pkg_cflags,$(CLIENT_PKGS))
$(CLIENT_TRAINER): $(BUILD)/tests/integration/client_trainer.o $(CLIENT_A) $(PROTO_A) $(CORE_A)
	@mkdir -p $(@D)
	$(if $(Q),@echo "  LD      $@")
	$(Q)$(CC) $(NS_LDFLAGS) -o $@ $^ $(CLIENT_LIBS)
test-integration: $(CLIENT_TRAINER)
