// @kubernetes/client-node (pinned in package-lock.json) against `vmsnap
// serve`: CRUD, every patch type, the status subresource of a custom
// resource, and an Informer that sees add/update/delete.
// usage: node client.mjs KUBECONFIG    Prints "ok NAME" per step; a failure exits 1.
import * as k8s from '@kubernetes/client-node';

const kc = new k8s.KubeConfig();
kc.loadFromFile(process.argv[2]);
const core = kc.makeApiClient(k8s.CoreV1Api);
const custom = kc.makeApiClient(k8s.CustomObjectsApi);
const NS = 'default';
const G = 'virtualization.deckhouse.io', V = 'v1alpha2', P = 'virtualdisksnapshots';

function ok(name) { console.log('ok ' + name); }
function must(cond, what) { if (!cond) throw new Error('failed: ' + what); }
const patch = (type) => k8s.setHeaderOptions('Content-Type', type);

// CRUD
const made = await core.createNamespacedConfigMap({ namespace: NS,
  body: { metadata: { name: 'node-cm', labels: { from: 'node' } }, data: { a: '1' } } });
must(made.metadata.uid, 'created with a uid');
const got = await core.readNamespacedConfigMap({ name: 'node-cm', namespace: NS });
must(got.data.a === '1', 'read back');
got.data.a = '2';
const replaced = await core.replaceNamespacedConfigMap({ name: 'node-cm', namespace: NS, body: got });
must(replaced.data.a === '2', 'replaced');
const list = await core.listNamespacedConfigMap({ namespace: NS, labelSelector: 'from=node' });
must(list.items.length === 1 && list.items[0].metadata.name === 'node-cm', 'listed by label');
ok('crud');

// every patch type
let p = await core.patchNamespacedConfigMap({ name: 'node-cm', namespace: NS, body: { data: { b: 'merge' } } },
  patch(k8s.PatchStrategy.MergePatch));
must(p.data.b === 'merge', 'merge patch');
p = await core.patchNamespacedConfigMap({ name: 'node-cm', namespace: NS,
  body: [{ op: 'replace', path: '/data/b', value: 'json' }] }, patch(k8s.PatchStrategy.JsonPatch));
must(p.data.b === 'json', 'json patch');
p = await core.patchNamespacedConfigMap({ name: 'node-cm', namespace: NS, body: { data: { c: 'strategic' } } },
  patch(k8s.PatchStrategy.StrategicMergePatch));
must(p.data.c === 'strategic', 'strategic merge patch');
p = await core.patchNamespacedConfigMap({ name: 'node-cm', namespace: NS, fieldManager: 'node-test', force: true,
  body: { apiVersion: 'v1', kind: 'ConfigMap', metadata: { name: 'node-cm' }, data: { d: 'apply' } } },
  patch(k8s.PatchStrategy.ServerSideApply));
must(p.data.d === 'apply', 'server-side apply');
ok('patches');

// a custom resource and its status subresource
await custom.createNamespacedCustomObject({ group: G, version: V, namespace: NS, plural: P,
  body: { apiVersion: G + '/' + V, kind: 'VirtualDiskSnapshot', metadata: { name: 'node-snap' },
    spec: { virtualDiskName: 'node-disk' } } });
const st = await custom.patchNamespacedCustomObjectStatus({ group: G, version: V, namespace: NS, plural: P,
  name: 'node-snap', body: { status: { phase: 'Ready' } } }, patch(k8s.PatchStrategy.MergePatch));
must(st.status.phase === 'Ready', 'status patched');
const again = await custom.getNamespacedCustomObject({ group: G, version: V, namespace: NS, plural: P, name: 'node-snap' });
must(again.status.phase === 'Ready' && again.metadata.generation === 1, 'status kept, generation unchanged');
ok('status subresource');

// an Informer: add, update, delete
const seen = [];
const informer = k8s.makeInformer(kc, '/api/v1/namespaces/default/configmaps',
  () => core.listNamespacedConfigMap({ namespace: NS, labelSelector: 'inf=node' }), 'inf=node');
const done = new Promise((resolve, reject) => {
  const timer = setTimeout(() => reject(new Error('informer saw ' + JSON.stringify(seen))), 20000);
  const note = (type) => (obj) => {
    seen.push(type + ':' + obj.metadata.name);
    if (type === 'delete') { clearTimeout(timer); resolve(); }
  };
  informer.on('add', note('add'));
  informer.on('update', note('update'));
  informer.on('delete', note('delete'));
  informer.on('error', (err) => { clearTimeout(timer); reject(err); });
});
await informer.start();
await core.createNamespacedConfigMap({ namespace: NS, body: { metadata: { name: 'node-inf', labels: { inf: 'node' } } } });
await new Promise((r) => setTimeout(r, 300));
await core.patchNamespacedConfigMap({ name: 'node-inf', namespace: NS, body: { data: { x: '1' } } },
  patch(k8s.PatchStrategy.MergePatch));
await new Promise((r) => setTimeout(r, 300));
await core.deleteNamespacedConfigMap({ name: 'node-inf', namespace: NS });
await done;
await informer.stop();
must(seen.join(',') === 'add:node-inf,update:node-inf,delete:node-inf', 'informer events ' + seen.join(','));
ok('informer');

await core.deleteNamespacedConfigMap({ name: 'node-cm', namespace: NS });
try {
  await core.readNamespacedConfigMap({ name: 'node-cm', namespace: NS });
  must(false, 'deleted');
} catch (e) {
  must(e.code === 404, 'a 404 after delete: ' + e.code);
}
ok('delete');
process.exit(0);
