--
-- The support report: one row per event that must go to Cello support,
-- with the fields of the event, exportable as CSV with plain COPY.
--
SELECT celloattr.cello_attribute('UPobYBDuu0N', 'user-sup', 'cello_api',
	email => 'sup@example.com', name => 'Sue "S" O''Neil', organization_id => 'org-9') AS sup \gset
SELECT celloattr.cello_transaction('user-sup', 'in_s1', 120.50, 'USD', '2020-01-15 10:00:00+00',
	'yearly', 'Scale, annual', 'sub_9', 12) > 0 AS reported;
SELECT celloattr.cello_transaction('user-sup', 'in_s1', 120.50, 'USD', '2020-02-01 08:30:00+00',
	'yearly', NULL, 'sub_9', trigger => 'charge-refunded') > 0 AS reported;

SELECT gateway, ucc, new_user_id, price, currency, new_user_email, new_user_name,
	   new_user_organization_id, trigger, event_timestamp, subscription_id, invoice_id,
	   "interval", seats_used, product_key, reason ~ '^older than celloattr.transaction_window' AS too_old
  FROM celloattr.support_report(:sup);

-- a finished repair with something for support says so
SELECT state FROM celloattr.attributions WHERE id = :sup;

-- the CSV export, as the README shows it
SET timezone = 'UTC';
COPY (SELECT ucc, new_user_id, price, currency, new_user_email, new_user_name, trigger,
			 event_timestamp, subscription_id, invoice_id, "interval", seats_used, product_key
		FROM celloattr.support_report(:sup)) TO STDOUT WITH (FORMAT csv, HEADER);
RESET timezone;

-- all repairs at once
SELECT count(*) >= 2 AS all_rows FROM celloattr.support_report();
