/* placeholder: replaced by the dkim/ implementation */
typedef int dkim_placeholder_t;
