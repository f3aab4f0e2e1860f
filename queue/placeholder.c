/* placeholder: replaced by the queue/ implementation */
typedef int queue_placeholder_t;
