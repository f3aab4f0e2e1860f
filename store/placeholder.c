/* placeholder: replaced by the store/ implementation */
typedef int store_placeholder_t;
