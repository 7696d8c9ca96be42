/* errors.c - lookups into NS_ERROR_MAP (code -> message, wire name, HTTP status). */
#include <normstat/errors.h>

#include <stddef.h>

typedef struct error_row_s {
    int code;
    int http_status;
    const char *name;
    const char *message;
} error_row_t;

static const error_row_t error_rows[] = {
#define ROW(name, code, status, wire, msg) {code, status, wire, msg},
    NS_ERROR_MAP(ROW)
#undef ROW
};

static const error_row_t *find_row(int code)
{
    for (size_t i = 0; i < sizeof(error_rows) / sizeof(error_rows[0]); i++)
        if (error_rows[i].code == code)
            return &error_rows[i];
    return NULL;
}

const char *ns_strerror(int code)
{
    const error_row_t *row = find_row(code);
    if (code == 0)
        return "success";
    return row ? row->message : "unknown error";
}

const char *ns_error_name(int code)
{
    const error_row_t *row = find_row(code);
    if (code == 0)
        return "ok";
    return row ? row->name : "unknown";
}

int ns_error_http_status(int code)
{
    const error_row_t *row = find_row(code);
    if (code == 0)
        return 200;
    return row ? row->http_status : 500;
}
