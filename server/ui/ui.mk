# server/ui/ui.mk - the dashboard (GET /ui/): its files are compiled into normstatd.
# embed.py writes them as a C table (api/ui_assets.h) into $(BUILD)/gen; no file is
# read at run time. Included by server/server.mk.

UI_FILES := $(sort $(wildcard server/ui/*.html server/ui/*.js server/ui/*.css))
UI_GEN_C := $(BUILD)/gen/server/ui_assets.c
UI_GEN_O := $(BUILD)/gen/server/ui_assets.o

$(UI_GEN_C): server/ui/embed.py $(UI_FILES)
	@mkdir -p $(@D)
	$(if $(Q),@echo "  GEN     $@")
	$(Q)$(PYTHON) server/ui/embed.py $@ $(UI_FILES)

$(UI_GEN_O): $(UI_GEN_C)
	$(if $(Q),@echo "  CC      $<")
	$(Q)$(CC) $(NS_CFLAGS) -Iserver/src -c -o $@ $<
