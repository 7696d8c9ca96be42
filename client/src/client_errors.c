/* client_errors.c - names and messages of the client's own error codes
 * (NS_CLIENT_ERROR_MAP); every other code is the protocol's. */
#include <normstat/client.h>

#include <stddef.h>

typedef struct error_row_s {
    int code;
    const char *name;
    const char *message;
} error_row_t;

static const error_row_t error_rows[] = {
#define ROW(name, code, wire, msg) {code, wire, msg},
    NS_CLIENT_ERROR_MAP(ROW)
#undef ROW
};

static const error_row_t *find_row(int code)
{
    for (size_t i = 0; i < sizeof(error_rows) / sizeof(error_rows[0]); i++)
        if (error_rows[i].code == code)
            return &error_rows[i];
    return NULL;
}

const char *ns_client_strerror(int code)
{
    const error_row_t *row = find_row(code);
    return row ? row->message : ns_strerror(code);
}

const char *ns_client_error_name(int code)
{
    const error_row_t *row = find_row(code);
    return row ? row->name : ns_error_name(code);
}
