--
-- Without shared_preload_libraries the extension still installs and
-- queues, and says that no worker will carry the repair out.
--
SHOW shared_preload_libraries;
CREATE EXTENSION celloattr;
SELECT celloattr.cello_attribute('pNRB1aYqArN', 'user-np', 'stripe') AS np \gset
-- one warning per transaction, not per row
SELECT count(celloattr.cello_attribute('pNRB1aYqArN', 'bulk-' || i, 'stripe')) AS queued
  FROM generate_series(1, 3) i;
SELECT state FROM celloattr.attributions WHERE id = :np;
-- wait() still works, by looking again now and then
SELECT celloattr.wait(:np, '50 ms');
-- the library defines its settings when loaded; none holds a secret
LOAD 'celloattr';
CREATE ROLE np_user;
SET ROLE np_user;
SHOW celloattr.stripe_secret_key;
SHOW celloattr.secrets_file;
RESET ROLE;
DROP ROLE np_user;
DROP EXTENSION celloattr;
